"""Pipeline efficiency from measured stage times: local updates vs GPipe and 1F1B.

For a balanced greedy MLP (every block 256 -> 256) with K = 2, 3, 4 stages, the per-stage
forward, backward and update times are measured once in this process (``measure_costs``). From
the same numbers:

* local: ``simulate`` runs N steps with those costs (queue capacity 2) -> makespan; speedup =
  the sequential time N * sum(stage costs) / makespan. Target: >= 0.9 K at K = 4. The stages
  do equal work, so measured differences are timing noise; "even" repeats the simulation with
  every stage at the mean cost, the balanced case the target is stated for.
* GPipe and 1F1B: ``schedule_timeline`` with M microbatches (each costs 1/M of a stage step)
  and a flush + update every step; beside them the textbook bound K * M / (M + K - 1).

Messages cost no time by default; ``--latency`` delays every message of the local simulation
(the GPipe/1F1B model has no communication, so this only ever favours the baselines).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pipeline_efficiency.py
"""
import argparse
import functools

import torch

from minilocal import Plan, models
from minilocal.runtime import (Job, ModelSpec, RandomBatches, makespan, measure_costs,
                               schedule_timeline, sgd, simulate)

WIDTH, BATCH = 256, 256


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps simulated (N)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per message")
    args = parser.parse_args()
    torch.set_num_threads(1)
    N = args.steps
    print(f"greedy MLP width {WIDTH}, batch {BATCH}, N = {N} steps, latency {args.latency:g} s; "
          f"speedup over one device running the stages in turn")
    print(f"{'K':>2} {'stage ms (min..max)':>20} {'local':>6} {'eff':>5} {'even':>5} {'eff':>5} | "
          f"{'M':>2} {'GPipe':>6} {'1F1B':>6} {'bound':>6}")
    for K in (2, 3, 4):
        model = ModelSpec(models.mlp, {"d_in": WIDTH, "width": WIDTH})
        job = Job(model, Plan.greedy(K), RandomBatches(BATCH, d_in=WIDTH),
                  functools.partial(sgd, lr=0.01), N)
        costs = measure_costs(job, n_steps=30)
        even = {k: [sum(v) / K] * K for k, v in costs.items()}
        per_stage = [f + b + u for f, b, u in zip(costs["forward"], costs["backward"],
                                                   costs["update"])]
        sequential = N * sum(per_stage)
        local, balanced = (sequential / makespan(simulate(job, c, capacity=2,
                                                          latency=args.latency).timeline)
                           for c in (costs, even))
        spread = f"{1e3 * min(per_stage):.2f}..{1e3 * max(per_stage):.2f}"
        for i, M in enumerate((4, 8, 32)):
            f, b = ([c / M for c in costs[k]] for k in ("forward", "backward"))
            gpipe, one_f_one_b = (sequential / makespan(schedule_timeline(
                f, b, M, name, n_steps=N, update=costs["update"])) for name in ("gpipe", "1f1b"))
            head = f"{K:>2} {spread:>20} {local:>6.2f} {local / K:>5.2f} {balanced:>5.2f} " \
                f"{balanced / K:>5.2f}" if i == 0 else " " * 48
            print(f"{head} | {M:>2} {gpipe:>6.2f} {one_f_one_b:>6.2f} {K * M / (M + K - 1):>6.2f}")


if __name__ == "__main__":
    main()
