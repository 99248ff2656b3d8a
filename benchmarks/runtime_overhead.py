"""Overhead of one process per stage: K-process wall time / one-process wall time, same work.

Greedy MLP (width 256, every block 256 -> 256), K = 2, 3, 4 stages, batch 64..1024. Inside one
process group, each round times the K processes running the Job (start barrier to last message,
``distributed.run_job``), then, while the other ranks wait at a barrier, rank 0 alone runs the
same stage steps with the sequential runner, once with the K processes' total threads and once
with 1. Alternating the two keeps them under the same machine load; the best of the rounds is
kept. The ratio is against the faster one-process time (extra threads can slow small steps
down). On a machine with about one core the K processes share it, so the ratio measures
messaging and scheduling overhead, not speedup. Target: ratio <= 1.15 at batch >= 256.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/runtime_overhead.py            # a few minutes
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/runtime_overhead.py --quick
"""
import argparse
import functools
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from minilocal import Plan, models
from minilocal.runtime import Job, ModelSpec, RandomBatches, run_sequential, sgd
from minilocal.runtime.distributed import STARTUP_S, Options, backend_and_device, run_job
from minilocal.runtime.launch import launch

WIDTH = 256


def make_job(K, batch, n_steps):
    model = ModelSpec(models.mlp, {"d_in": WIDTH, "width": WIDTH})
    return Job(model, Plan.greedy(K), RandomBatches(batch, d_in=WIDTH),
               functools.partial(sgd, lr=0.01), n_steps)


def bench_worker(rank, world, jobs, repeats, threads):
    """Per Job: `repeats` rounds of (K processes, then rank 0 alone with K and with 1 threads)."""
    torch.set_num_threads(threads)
    opts = Options("gloo", timeout=120.0, threads=threads, device="cpu")
    backend, device, staging = backend_and_device(opts, world)
    dist.init_process_group(backend, timeout=timedelta(seconds=STARTUP_S))
    rows = []
    for job in jobs:
        best = {"dist": [], "seq_k": [], "seq_1": []}
        for _ in range(repeats):
            best["dist"].append(run_job(rank, world, job, opts, device, staging)["wall"])
            dist.barrier()
            if rank == 0:
                for key, n in (("seq_k", world * threads), ("seq_1", 1)):
                    torch.set_num_threads(n)
                    best[key].append(run_sequential(job).wall)
                torch.set_num_threads(threads)
            dist.barrier()
        rows.append({k: min(v) if v else None for k, v in best.items()})
    dist.barrier()
    dist.destroy_process_group()
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and steps")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per measurement (best kept)")
    args = parser.parse_args()
    batches = [64, 256, 1024] if args.quick else [64, 128, 256, 512, 1024]
    cores = os.cpu_count() or 1
    print(f"{cores} cores; width {WIDTH}; best of {args.repeats} alternating rounds; training "
          f"loops only (process start-up excluded)")
    print(f"{'K':>2} {'batch':>6} {'steps':>6} {'K procs s':>10} {'1 proc, K thr s':>16} "
          f"{'1 proc, 1 thr s':>16} {'ratio':>6}")
    for K in ([2, 4] if args.quick else [2, 3, 4]):
        threads = max(1, cores // K)
        steps = [max(10, (40 if args.quick else 100) * 256 // b) for b in batches]
        jobs = [make_job(K, b, n) for b, n in zip(batches, steps)]
        rows = launch(bench_worker, (jobs, args.repeats, threads), K)[0]
        for b, n, r in zip(batches, steps, rows):
            print(f"{K:>2} {b:>6} {n:>6} {r['dist']:>10.3f} {r['seq_k']:>16.3f} "
                  f"{r['seq_1']:>16.3f} {r['dist'] / min(r['seq_k'], r['seq_1']):>6.2f}")


if __name__ == "__main__":
    main()
