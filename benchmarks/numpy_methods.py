"""NumPy training throughput and peak cached-activation bytes per method, 8-block MLP.

Usage: python benchmarks/numpy_methods.py [--width 256] [--batch 128] [--steps 30]
Methods are timed interleaved (round-robin, several rounds, median) so that machine noise hits
all of them alike; every figure in one table comes from one run.
"""
import argparse
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np  # noqa: E402

from minilocal import Plan  # noqa: E402
from minilocal.numpy_core import Adam, init_mlp, local_grads  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    n = args.blocks
    plans = {"backprop": Plan.backprop(n), "greedy": Plan.greedy(n),
             "overlapping": Plan.overlapping(n), "chunked(2)": Plan.chunked(n, 2),
             "chunked(4)": Plan.chunked(n, 4)}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, 40)).astype(np.float32)
    y = rng.integers(0, 10, args.batch)
    setups = {}
    for name, plan in plans.items():
        params = init_mlp(plan, 40, args.width, 10, seed=0, dtype=np.float32)
        stats = {}
        local_grads(params, x, y, plan, stats=stats)
        setups[name] = (plan, params, Adam(params, lr=1e-3), stats["peak_cache_bytes"], [])
    for _ in range(args.rounds):
        for name, (plan, params, opt, _, times) in setups.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                grads, _ = local_grads(params, x, y, plan)
                opt.step(grads)
            times.append((time.perf_counter() - t0) / args.steps)
    base_t, base_b = np.median(setups["backprop"][4]), setups["backprop"][3]
    print(f"NumPy MLP, {n} blocks x width {args.width}, batch {args.batch}, float32, "
          f"median of {args.rounds} rounds x {args.steps} steps")
    print(f"{'method':<12} {'examples/s':>11} {'time vs bp':>11} {'peak cache':>11} {'vs bp':>6}")
    for name, (plan, _, _, peak, times) in setups.items():
        t = np.median(times)
        print(f"{name:<12} {args.batch / t:>11.0f} {t / base_t:>10.2f}x {peak / 2**10:>8.0f} KiB "
              f"{peak / base_b:>5.2f}x")


if __name__ == "__main__":
    main()
