"""Overhead of one process per stage: K-process wall time / one-process wall time, same work.

Greedy MLP (width 256, every block 256 -> 256), K = 2, 3, 4 stages, batch 64..1024. The K
processes (gloo, ``run_distributed``, all batch sizes in one process group) are timed from their
start barrier to their last message; the one-process baseline is the sequential runner doing the
same stage steps, timed the same way, once with the K processes' total threads and once with 1;
the ratio is against the faster of the two (extra threads can slow small steps down a lot). On
a machine with about one core the K processes share it, so the ratio measures messaging and
scheduling overhead, not speedup. Target: ratio <= 1.15 at batch >= 256.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/runtime_overhead.py            # a few minutes
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/runtime_overhead.py --quick
"""
import argparse
import functools
import os

import torch

from minilocal import Plan, models
from minilocal.runtime import Job, ModelSpec, RandomBatches, run_distributed, run_sequential, sgd

WIDTH = 256


def job(K, batch, n_steps):
    model = ModelSpec(models.mlp, {"d_in": WIDTH, "width": WIDTH})
    return Job(model, Plan.greedy(K), RandomBatches(batch, d_in=WIDTH),
               functools.partial(sgd, lr=0.01), n_steps)


def sequential_wall(j, threads, repeats):
    torch.set_num_threads(threads)
    return min(run_sequential(j).wall for _ in range(repeats))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and steps")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (best kept)")
    args = parser.parse_args()
    batches = [64, 256, 1024] if args.quick else [64, 128, 256, 512, 1024]
    stage_counts = [2, 4] if args.quick else [2, 3, 4]
    cores = os.cpu_count() or 1
    print(f"{cores} cores; width {WIDTH}; best of {args.repeats}; times are training loops only "
          f"(process start-up excluded)")
    print(f"{'K':>2} {'batch':>6} {'steps':>6} {'K procs s':>10} {'1 proc, K thr s':>16} "
          f"{'1 proc, 1 thr s':>16} {'ratio':>6}")
    for K in stage_counts:
        per_worker = max(1, cores // K)
        steps = {b: max(10, (40 if args.quick else 100) * 256 // b) for b in batches}
        jobs = [job(K, b, steps[b]) for b in batches for _ in range(args.repeats)]
        runs = run_distributed(jobs, threads=per_worker, timeout=120)
        for i, b in enumerate(batches):
            dist_wall = min(r.wall for r in runs[i * args.repeats:(i + 1) * args.repeats])
            same = sequential_wall(jobs[i * args.repeats], K * per_worker, args.repeats)
            one = sequential_wall(jobs[i * args.repeats], 1, args.repeats)
            print(f"{K:>2} {b:>6} {steps[b]:>6} {dist_wall:>10.3f} {same:>16.3f} {one:>16.3f} "
                  f"{dist_wall / min(same, one):>6.2f}")


if __name__ == "__main__":
    main()
