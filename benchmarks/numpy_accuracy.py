"""MNIST-1D test accuracy per method, NumPy MLP (4 blocks x 128, Adam 3e-3, batch 128).

Usage: python benchmarks/numpy_accuracy.py [--steps 1500] [--seeds 0 1 2]
Prints the output head's accuracy (mean and min/max over seeds) and every head's accuracy.
"""
import argparse
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np  # noqa: E402

from minilocal import Plan  # noqa: E402
from minilocal.data import mnist1d  # noqa: E402
from minilocal.numpy_core import init_mlp, train  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    n, data = args.blocks, mnist1d()
    plans = [Plan.backprop(n), Plan.greedy(n), Plan.overlapping(n), Plan.chunked(n, 2)]
    print(f"NumPy MLP {n} x {args.width} on MNIST-1D, {args.steps} Adam steps, seeds {args.seeds}")
    print(f"{'method':<12} {'output acc':>10} {'min':>6} {'max':>6} {'s/run':>6}  every head (seed {args.seeds[0]})")
    for plan in plans:
        accs, heads, t0 = [], None, time.perf_counter()
        for seed in args.seeds:
            params = init_mlp(plan, 40, args.width, 10, seed=seed, dtype=np.float32)
            h = train(params, plan, data, steps=args.steps, batch_size=128, lr=3e-3,
                      eval_every=args.steps, seed=seed, progress=False)
            accs.append(h["test_acc"][-1][-1])
            heads = heads or h["test_acc"][-1]
        per_run = (time.perf_counter() - t0) / len(args.seeds)
        print(f"{plan.name:<12} {np.mean(accs):>10.3f} {min(accs):>6.3f} {max(accs):>6.3f} {per_run:>6.1f}  "
              + " ".join(f"{a:.3f}" for a in heads))


if __name__ == "__main__":
    main()
