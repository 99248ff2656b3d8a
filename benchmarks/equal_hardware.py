"""The shipped sweep (results/sweep_mnist1d.json) timed at equal hardware: N devices in all.

For each budget N, each method's fastest idealized time to the target over batch sizes (each with
its best learning rate), as a speed-up over data-parallel backprop on the same N devices, beside
GPipe-pipelined backprop on the same N (4 stages x N/4 replicas, one example per microbatch).
The "unlimited devices" view (one device per example and stage) is printed last for comparison.

    .venv/bin/python benchmarks/equal_hardware.py [--target 0.3] [--budgets 16 64 256 1024 4096]
"""
import argparse
from pathlib import Path

import torch

from minilocal import Plan
from minilocal.compute import load_results, model_flops
from minilocal.compute.cost import pipeline_stage_flops
from minilocal.compute.pareto import equal_hardware, frontier
from minilocal.models import mlp

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default=str(ROOT / "results" / "sweep_mnist1d.json"))
    parser.add_argument("--target", type=float, default=0.3)
    parser.add_argument("--budgets", type=int, nargs="+", default=[16, 64, 256, 1024, 4096])
    args = parser.parse_args(argv)
    results = load_results(args.results)
    config = next(iter(results.values()))["config"]
    L = config["n_blocks"]
    blocks, heads = mlp(Plan.backprop(L), width=config["width"])
    block_flops, head_flops = model_flops(blocks, heads, Plan.backprop(L), torch.zeros(4, 40))
    pipe = pipeline_stage_flops(Plan.chunked(L, L), block_flops, head_flops[-1])
    rows = equal_hardware(results, args.target, args.budgets, pipeline_work=pipe)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    print(f"speed-up over data-parallel backprop on the same N devices, to train loss {args.target}")
    print(f"{'N':>6s} " + " ".join(f"{m:>20s}" for m in methods))
    for n in args.budgets:
        by = {r["method"]: r for r in rows if r["n_devices"] == n}
        cells = [f"{by[m]['speedup']:5.2f}x (B={by[m]['batch']:4d})" if m in by else f"{'-':>20s}" for m in methods]
        print(f"{n:6d} " + " ".join(f"{c:>20s}" for c in cells))
    unlimited = {}
    for r in frontier(results, args.target):
        if r["time"] is not None and (r["method"] not in unlimited or r["time"] < unlimited[r["method"]]):
            unlimited[r["method"]] = r["time"]
    base = unlimited["backprop"]
    print("unlimited devices (one per example and stage): "
          + ", ".join(f"{m} {base / t:.2f}x" for m, t in unlimited.items()))


if __name__ == "__main__":
    main()
