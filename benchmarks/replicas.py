"""K stages × D replicas: what averaging costs, and the K·D-process overhead on this machine.

Two measurements, side by side in one process group per layout, interleaved round by round so
that both see the same machine load, repeated, reported as median [min, max] over the rounds:

1. Averaging vs a raw all-reduce of the same bytes. Every rank holds its stage's gradients (the
   shapes of the Job's stage); after a barrier it times ``Averager.reduce`` (copy into flat
   buckets, all_reduce SUM over the replica group, divide, copy back) and then one raw
   ``all_reduce`` of a flat tensor with the same number of bytes, alternately, many times.
   Their difference is the bucketing's cost; the raw call is what gloo needs anyway.
2. K·D processes vs one process doing the same work: each round times the K·D ranks running
   the Job (``run_job``, start barrier to last message; the replicas' averaging included), then,
   while the others wait at a barrier, rank 0 alone runs the same full-batch Job with the
   sequential runner (1 thread and K·D threads, the faster kept). On a machine with about one
   core of real throughput the processes share it: the ratio is overhead, not speed-up.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/replicas.py            # a few minutes
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/replicas.py --quick
"""
import argparse
import functools
import os
import statistics
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from minilocal import Plan, models
from minilocal.runtime import Job, ModelSpec, RandomBatches, run_sequential, sgd
from minilocal.runtime.distributed import STARTUP_S, Options, backend_and_device, run_job
from minilocal.runtime.launch import launch
from minilocal.runtime.mesh import Averager, Layout, build_stage, replica_group


def make_job(plan, width, batch, n_steps):
    model = ModelSpec(models.mlp, {"d_in": width, "width": width})
    return Job(model, plan, RandomBatches(batch, d_in=width), functools.partial(sgd, lr=0.01),
               n_steps)


def spread(values):
    return statistics.median(values), min(values), max(values)


def bench_worker(rank, world, job, replicas, repeats, calls):
    torch.set_num_threads(1)
    opts = Options("gloo", timeout=120.0, threads=1, device="cpu", replicas=replicas)
    backend, device, staging = backend_and_device(opts, world)
    dist.init_process_group(backend, timeout=timedelta(seconds=STARTUP_S))
    layout = Layout(job.plan.n_stages, replicas)
    group = replica_group(layout, backend)
    stage, _, _ = build_stage(job, layout.where(rank)[0], device)
    grads = [torch.randn_like(p) for p in stage.parameters()]
    nbytes = sum(g.numel() * g.element_size() for g in grads)
    raw = torch.zeros(nbytes // 4)  # float32, the same bytes as the stage's gradients
    averager = Averager(group, layout, rank, 120.0, staging)
    rows = {"average": [], "raw": [], "procs": [], "one": []}
    for _ in range(repeats):
        for kind in ("average", "raw"):  # interleaved: one call of each, `calls` times
            rows[kind].append(0.0)
        for _ in range(calls):
            dist.barrier(group)
            t0 = time.perf_counter()
            averager.reduce(grads, 0)
            t1 = time.perf_counter()
            dist.barrier(group)
            t2 = time.perf_counter()
            dist.all_reduce(raw, group=group)
            t3 = time.perf_counter()
            rows["average"][-1] += (t1 - t0) / calls
            rows["raw"][-1] += (t3 - t2) / calls
        dist.barrier()
        rows["procs"].append(run_job(rank, world, job, opts, device, staging, group=group)["wall"])
        dist.barrier()
        if rank == 0:
            best = []
            for n in (1, world):
                torch.set_num_threads(n)
                best.append(run_sequential(job).wall)
            torch.set_num_threads(1)
            rows["one"].append(min(best))
        dist.barrier()
    dist.barrier()
    dist.destroy_process_group()
    return {"rows": rows, "bytes": nbytes}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and steps")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    args = parser.parse_args()
    repeats = 3 if args.quick else args.repeats
    width, batch, steps, calls = 256, 256, (20 if args.quick else 50), (20 if args.quick else 50)
    layouts = [(Plan.greedy(2), 2), (Plan.backprop(2), 2), (Plan.backprop(2), 4)]
    print(f"{os.cpu_count()} cores; MLP width {width}, batch {batch}, {steps} steps; "
          f"{repeats} interleaved rounds, median [min, max]; process start-up excluded")
    print(f"{'layout':>14} {'grad KiB':>9} {'average ms':>20} {'raw all_reduce ms':>20} "
          f"{'ratio':>18} {'K*D procs / 1 proc':>22}")
    for plan, D in layouts:
        job = make_job(plan, width, batch, steps)
        layout = Layout(plan.n_stages, D)
        parts = launch(bench_worker, (job, D, repeats, calls), layout.world)
        p0 = parts[0]["rows"]
        ratio = [a / r for a, r in zip(p0["average"], p0["raw"])]
        over = [a / b for a, b in zip(p0["procs"], p0["one"])]
        ms = lambda v: "{:.3f} [{:.3f}, {:.3f}]".format(*(1e3 * x for x in spread(v)))  # noqa
        ratio_s = "{:.2f} [{:.2f}, {:.2f}]".format(*spread(ratio))
        over_s = "{:.2f} [{:.2f}, {:.2f}]".format(*spread(over))
        name = f"{plan.n_stages} x {D} {plan.name}"
        print(f"{name:>14} {parts[0]['bytes'] / 1024:>9.0f} {ms(p0['average']):>20} "
              f"{ms(p0['raw']):>20} {ratio_s:>18} {over_s:>22}")


if __name__ == "__main__":
    main()
