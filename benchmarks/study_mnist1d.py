"""The compute-efficiency study, regenerated with one command (resumable; every run is cached).

A 1-D CNN (4 blocks, 16 channels) on MNIST-1D with 50,000 examples (40,000 to train, so even the
largest batch, 8192, is a fifth of the data), target: held-out loss 0.5 of the output head.
Per (method, batch): the learning rate is tuned on seed 0 over 1e-3, 3e-3, 1e-2, extended along
the 1-3-10 grid while the best value sits at an edge; seeds 0, 1, 2 then run at the best rate.
Every method: Adam, 50 warm-up steps, at most 4000 steps or 40 epochs; overlapping with its
backward message one step late (delay 1), as the asynchronous runtime runs it. Then the gradient
noise scale B_simple per method (at initialization and where the batch-512 run reached the
target), the equal-hardware speed-ups (cost.equal_hardware_time; GPipe backprop with
cost.pipeline_time), and three figures.

    .venv/bin/python benchmarks/study_mnist1d.py              # CPU, about 40-60 min on 2 cores
    .venv/bin/python benchmarks/study_mnist1d.py --quick      # a smoke test of the whole path
    python benchmarks/study_mnist1d.py --scale lab            # on a CUDA GPU: 200k examples, 64 channels

Writes results/study_mnist1d.json (every run: config with seed and lr, held-out curve, stage
FLOPs; plus the tuning verdicts, noise scales, speed-ups and metadata) and results/study_*.png.
"""
import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from minilocal import Plan  # noqa: E402
from minilocal.compute import model_flops, study  # noqa: E402
from minilocal.compute.cost import equal_hardware_time, pipeline_stage_flops  # noqa: E402
from minilocal.compute.pareto import lower_envelope  # noqa: E402
from minilocal.compute.sweep import config_key, load_results  # noqa: E402
from minilocal.data import atomic_write  # noqa: E402

METHODS = ["backprop", "greedy", "overlapping", "chunked2"]
SCALES = {
    "cpu": dict(batches=[32, 128, 512, 2048, 8192], seeds=[0, 1, 2], overrides={}),
    # on one GPU (untested so far): 4x the data, 4x the channels, batches up to 32768
    "lab": dict(batches=[32, 128, 512, 2048, 8192, 32768], seeds=[0, 1, 2],
                overrides=dict(n_samples=200000, channels=64, device="cuda")),
    "quick": dict(batches=[64, 512], seeds=[0, 1, 2],
                  overrides=dict(n_samples=5000, max_steps=60, max_epochs=40, target=1.8,
                                 eval_examples=500)),
}
BUDGETS = [16, 64, 256, 1024, 4096, 16384]
THROUGHPUT = 1e12  # FLOP/s per device: only scales the times, the ratios do not depend on it


def save(path, payload):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=1)
    atomic_write(path, write)


def make_cache(path):
    """run_cached(config): the cached record, or a new run saved before returning."""
    payload = load_results(path) or {}
    runs = payload.setdefault("runs", {})

    def run_cached(c):
        key = config_key(c)
        if key not in runs:
            t = time.perf_counter()
            runs[key] = study.run(c)
            r = runs[key]
            print(f"  {c['method']:12s} batch {c['batch']:5d} lr {c['lr']:<7g} seed {c['seed']}: "
                  f"{'reached at step ' + str(r['reached']) if r['reached'] else 'not reached'} "
                  f"of {r['budget']} ({time.perf_counter() - t:.0f} s)", flush=True)
            save(path, payload)
        return runs[key]
    return payload, run_cached


def figures(best, noise, ups, envelope_n, out_dir, tag):
    """steps vs batch (error bars, B_simple marked), speed-up vs N, held-out loss vs time at N."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(METHODS + ["backprop, GPipe"], plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for m, by_batch in best.items():
        pts = [(b, [r["reached"] for r in rs.values() if r["reached"]]) for b, rs in sorted(by_batch.items())]
        pts = [(b, s) for b, s in pts if len(s) == len(by_batch[b])]  # every seed reached the target
        if pts:
            b, s = zip(*pts)
            mean = np.array([np.mean(v) for v in s])
            err = np.array([[mu - min(v), max(v) - mu] for mu, v in zip(mean, s)]).T
            ax.errorbar(b, mean, yerr=err, fmt="o-", capsize=3, color=colors[m], label=m)
        if noise.get(m, {}).get("at_target"):
            ax.axvline(noise[m]["at_target"], color=colors[m], ls=":", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="steps to held-out loss target",
           title="steps to target (mean, min-max over 3 seeds); dotted: B_simple")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / f"study_steps_vs_batch_{tag}.png", dpi=110)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for m in list(best) + ["backprop, GPipe"]:
        pts = [(n, v) for (mm, n), v in sorted(ups.items(), key=lambda kv: kv[0][1]) if mm == m and None not in v]
        if pts:
            n, v = zip(*pts)
            mean = np.array([np.mean(x) for x in v])
            err = np.array([[mu - min(x), max(x) - mu] for mu, x in zip(mean, v)]).T
            ax.errorbar(n, mean, yerr=err, fmt="o-", capsize=3, color=colors[m], label=m)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set(xscale="log", xlabel="devices in all (N)", ylabel="speed-up over data-parallel backprop",
           title="time to held-out target at equal hardware")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / f"study_speedup_vs_devices_{tag}.png", dpi=110)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for m, by_batch in best.items():
        curves = []
        for rs in by_batch.values():
            r = rs[min(rs)]
            if r["n_stages"] <= envelope_n:
                curves.append(([equal_hardware_time(s, r["stage_flops"], r["config"]["batch"], envelope_n,
                                                    THROUGHPUT) for s in r["steps"][1:]], r["loss"][1:]))
        if curves:
            ax.step(*lower_envelope(curves), where="post", color=colors[m], lw=2, label=m)
    ax.set(xscale="log", yscale="log", xlabel=f"idealized time on N = {envelope_n} devices (s)",
           ylabel="held-out loss (output head)", title="best held-out loss by time, seed 0")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / f"study_loss_vs_time_{tag}.png", dpi=110)
    plt.close("all")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny version of every step (a minute)")
    parser.add_argument("--scale", choices=["cpu", "lab"], default="cpu",
                        help="cpu: the shipped study; lab: bigger, on a CUDA GPU (default: cpu)")
    parser.add_argument("--out", default=str(ROOT / "results"), help="folder for the JSON and figures")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    name = "quick" if args.quick else args.scale
    if name == "lab" and not torch.cuda.is_available():
        parser.error("--scale lab needs a CUDA GPU (torch.cuda.is_available() is False); use --scale cpu")
    tag = {"quick": "quick", "cpu": "mnist1d", "lab": "mnist1d_lab"}[name]
    scale = SCALES[name]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"study_{tag}.json"
    payload, run_cached = make_cache(path)
    started = time.perf_counter()
    best, tuning = {}, {}
    for m in METHODS:
        for b in scale["batches"]:
            print(f"tuning {m} at batch {b}", flush=True)
            lr, records, interior = study.tune(m, b, run_cached, **scale["overrides"])
            tuning[f"{m}/{b}"] = dict(lr=lr, tried=sorted(records), interior=interior)
            best.setdefault(m, {})[b] = {s: run_cached(study.config(m, b, lr, s, **scale["overrides"]))
                                         for s in scale["seeds"]}
    noise = {}
    mid = scale["batches"][len(scale["batches"]) // 2]
    for m in METHODS:
        c = study.config(m, mid, tuning[f"{m}/{mid}"]["lr"], 0, **scale["overrides"])
        x, y = (t.to(c["device"]) for t in study.load(c)[:2])
        fresh = study.build(c).to_devices(c["device"])
        torch.manual_seed(0)
        rec, trained = study.run(c, return_net=True)
        noise[m] = dict(batch=mid, at_init=study.noise_scale(fresh, x, y),
                        at_target=study.noise_scale(trained, x, y) if rec["reached"] else None)
        print(f"B_simple {m}: {noise[m]['at_init']:.0f} at init, "
              f"{noise[m]['at_target'] or float('nan'):.0f} where batch {mid} reached the target", flush=True)
    c = study.config("backprop", 64, 1e-3, **scale["overrides"])
    net = study.build(c)
    x = study.load(c)[0]
    block_flops, head_flops = model_flops(net.blocks, net.heads, net.plan, x[:4])
    pipe_work = pipeline_stage_flops(Plan.chunked(c["n_blocks"], c["n_blocks"]), block_flops, head_flops[-1])
    ups = study.speedups(best, BUDGETS, pipe_work, THROUGHPUT)
    payload["summary"] = dict(
        tuning=tuning, noise_scale=noise, pipeline_stage_flops=pipe_work,
        speedup={f"{m}@{n}": v for (m, n), v in ups.items()},
        meta=dict(python=platform.python_version(), torch=torch.__version__, numpy=np.__version__,
                  machine=platform.machine(), data=f"MNIST-1D, {c['n_samples']} examples (80/20 split)",
                  model=f"cnn1d, {c['n_blocks']} blocks, {c['channels']} channels", target=c["target"],
                  budgets=BUDGETS, throughput=THROUGHPUT, seeds=scale["seeds"], batches=scale["batches"],
                  cost_model="cost.equal_hardware_time / cost.pipeline_time, no communication cost"))
    save(path, payload)
    figures(best, noise, ups, 1024 if not args.quick else 64, out_dir, tag)
    edge = [k for k, v in tuning.items() if not v["interior"]]
    print("learning rates: every best value interior" if not edge else f"best lr still at the grid's edge: {edge}")
    print(f"speed-up over data-parallel backprop at equal hardware (mean [min, max] over seeds), "
          f"held-out loss {c['target']}:")
    print(f"{'N':>6s} " + " ".join(f"{m:>22s}" for m in METHODS[1:] + ["backprop, GPipe"]))
    for n in BUDGETS:
        cells = []
        for m in METHODS[1:] + ["backprop, GPipe"]:
            v = ups.get((m, n), [])
            cells.append(f"{np.mean(v):.2f} [{min(v):.2f}, {max(v):.2f}]" if v and None not in v else "-")
        print(f"{n:6d} " + " ".join(f"{cell:>22s}" for cell in cells))
    print(f"done in {time.perf_counter() - started:.0f} s (cached runs are not repeated)")


if __name__ == "__main__":
    main()
