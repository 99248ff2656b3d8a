"""MNIST-1D compute-efficiency sweep: methods x batch sizes x learning rates, then the Pareto views
and gradient similarity. Cached: a re-run computes only what is missing; Ctrl-C and re-run resumes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sweep_mnist1d.py          # CPU, about 15 min
    .venv/bin/python benchmarks/sweep_mnist1d.py --scale lab                 # GPU lab: deeper, wider, more

Writes results/sweep_mnist1d[_lab].json, results/similarity_mnist1d[_lab].json and the figures
beside them; prints, per target loss, the frontier table and each method's best idealized time.
"""
import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import torch  # noqa: E402

from minilocal.compute.cost import describe_cost_model  # noqa: E402
from minilocal.compute.pareto import frontier  # noqa: E402
from minilocal.compute.similarity import similarity_over_training  # noqa: E402
from minilocal.viz import plot_loss_vs_time, plot_scaling, plot_similarity  # noqa: E402
from minilocal.compute.sweep import (DEFAULTS, build_net, load_data, make_plan, sweep,  # noqa: E402
                                     sweep_configs)

THROUGHPUT = 1e12  # FLOP/s per device: only scales the time axis, ratios do not depend on it
SCALES = {
    "cpu": dict(methods=["backprop", "greedy", "overlapping", "chunked2"],
                batch_sizes=[16, 64, 256, 1024, 4000], lrs=[1e-3, 3e-3, 1e-2, 3e-2],
                settings=dict(n_blocks=4, width=128, max_steps=3000, stop_loss=0.3),
                targets=[1.0, 0.5, 0.3], similarity=dict(batch=64, lr=3e-3, steps=600, every=50)),
    "lab": dict(methods=["backprop", "greedy", "overlapping", "chunked2", "chunked4"],
                batch_sizes=[16, 32, 64, 128, 256, 512, 1024, 2048, 4000],
                lrs=[1e-3, 3e-3, 1e-2, 3e-2],
                settings=dict(n_blocks=8, width=256, max_steps=20000, stop_loss=0.05),
                targets=[1.0, 0.5, 0.3, 0.1, 0.05],
                similarity=dict(batch=64, lr=1e-3, steps=3000, every=100)),
}


def similarity_run(config):
    """A sweep 'run' that trains with the config's method and records gradient cosines."""
    torch.manual_seed(config["seed"])
    x, y, _, _ = load_data(config)
    net = build_net(config, make_plan(config["method"], config["n_blocks"]), x.shape[1])
    probe = (x[:512], y[:512])  # a fixed batch: every measurement compares the same examples
    history = similarity_over_training(net, x, y, probe, config["steps"], config["every"],
                                       config["batch"], config["seed"])
    return dict(config=config, **history)


def print_frontier(results, targets):
    for target in targets:
        rows = frontier(results, target, THROUGHPUT)
        print(f"\ntarget train loss {target:g} (time in ms at {THROUGHPUT:.0e} FLOP/s per device, "
              f"one device per example and stage)")
        print(f"{'method':<12}{'batch':>6}{'lr':>8}{'steps':>7}{'time ms':>10}{'GFLOP':>9}")
        for r in rows:
            reached = r["steps"] is not None
            print(f"{r['method']:<12}{r['batch']:>6}{r['lr']:>8.0e}"
                  + (f"{r['steps']:>7}{r['time'] * 1e3:>10.3f}{r['flops'] / 1e9:>9.2f}" if reached
                     else f"{'-':>7}{'-':>10}{'-':>9}"))
        best = {}
        for r in rows:
            if r["time"] is not None and r["time"] < best.get(r["method"], (float("inf"),))[0]:
                best[r["method"]] = (r["time"], r["batch"], r["flops"])
        base = best.get("backprop")
        for m, (t, b, fl) in best.items():
            vs = (f"  {base[0] / t:5.2f}x faster, {fl / base[2]:5.2f}x the FLOPs of backprop"
                  if base and m != "backprop" else "")
            print(f"  best {m:<12} {t * 1e3:8.3f} ms at batch {b:>5}{vs}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    parser.add_argument("--device", default=None, help="default: cpu for --scale cpu, cuda for lab")
    parser.add_argument("--out", default="results", help="folder for the JSON caches and figures")
    args = parser.parse_args()
    scale = SCALES[args.scale]
    device = args.device or ("cuda" if args.scale == "lab" else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {device}: CUDA is not available here; pass --device cpu")
    if device == "cpu":
        torch.set_num_threads(1)  # the sweep shares the machine; one thread keeps timings stable
    suffix = "" if args.scale == "cpu" else f"_{args.scale}"
    out = Path(args.out)
    print(describe_cost_model())

    configs = sweep_configs(scale["methods"], scale["batch_sizes"], scale["lrs"], device=device,
                            **scale["settings"])
    results = sweep(configs, out / f"sweep_mnist1d{suffix}.json")
    print(f"\n{len(results)} runs; training wall time {sum(r['wall_s'] for r in results.values()):.0f} s")
    print_frontier(results, scale["targets"])

    figures = {"pareto_scaling": plot_scaling(frontier(results, scale["targets"][-1], THROUGHPUT),
                                              scale["targets"][-1])[0],
               "loss_vs_time": plot_loss_vs_time(results, scale["targets"][-1], THROUGHPUT)[0],
               "loss_vs_flops": plot_loss_vs_time(results, scale["targets"][-1], x="flops")[0]}

    sim = scale["similarity"]
    sim_configs = [dict(DEFAULTS, **scale["settings"], device=device, method=m, batch=sim["batch"],
                        lr=sim["lr"], steps=sim["steps"], every=sim["every"], kind="similarity")
                   for m in scale["methods"] if m != "backprop"]
    similarity = sweep(sim_configs, out / f"similarity_mnist1d{suffix}.json", run=similarity_run)
    print("\ncosine(local gradient, backprop gradient) per block, at the first and last measurement")
    for record in similarity.values():
        first, last = record["cosine"][0], record["cosine"][-1]
        print(f"  {record['config']['method']:<12} step 0: {[round(c, 3) for c in first]}  "
              f"step {record['step'][-1]}: {[round(c, 3) for c in last]}")
        figures[f"similarity_{record['config']['method']}"] = plot_similarity(
            record, title=f"{record['config']['method']}: gradient similarity to backprop")[0]
    for name, fig in figures.items():
        fig.savefig(out / f"{name}_mnist1d{suffix}.png", dpi=110)
    print(f"\nfigures in {out}/: " + ", ".join(f"{n}_mnist1d{suffix}.png" for n in figures))


if __name__ == "__main__":
    main()
