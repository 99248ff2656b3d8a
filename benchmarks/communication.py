"""Do the equal-hardware speed-ups of the study survive communication?

The study (benchmarks/study_mnist1d.py, results/study_mnist1d.json) times every run with the
idealized cost model and no communication. This script re-times the same runs (same steps to the
held-out target, same tuned learning rates, 3 seeds) with the cost model's communication term
(``cost.Traffic``: alpha + bytes / beta per message; a stage's forward and backward messages and
the all-reduce of its parameters over its replicas, not overlapped with compute) on three
kinds of link, and prints the speed-up over data-parallel backprop on the same N devices.

The bytes come from the study's model itself (its block outputs and its stages' parameters in
float32). The links are round numbers, not measurements: a GPU-to-GPU link inside a node
(5 us, 200 GB/s), a fast network (20 us, 12.5 GB/s = 100 Gb/s) and a slow one (50 us, 1.25 GB/s
= 10 Gb/s). The per-device throughput is the study's 1e12 FLOP/s; with communication the
ratios depend on it (a faster device makes communication weigh more).

    .venv/bin/python benchmarks/communication.py [--results results/study_mnist1d.json]
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from minilocal import Plan  # noqa: E402
from minilocal.compute import study  # noqa: E402
from minilocal.compute.cost import PIPELINED, Link, Traffic  # noqa: E402
from minilocal.compute.sweep import make_plan  # noqa: E402
from minilocal.models import cnn1d  # noqa: E402

LINKS = {"no communication": None,
         "in-node link (5 us, 200 GB/s)": Link(5e-6, 200e9),
         "100 Gb/s network (20 us, 12.5 GB/s)": Link(20e-6, 12.5e9),
         "10 Gb/s network (50 us, 1.25 GB/s)": Link(50e-6, 1.25e9)}


def sizes(plan, c, head_on_every_stage=True):
    """(bytes per example at each stage boundary, parameter bytes per stage) of the study's model;
    without ``head_on_every_stage`` only the last stage holds a head (a pipeline of backprop)."""
    blocks, heads = cnn1d(plan, channels=c["channels"], seed=0)
    h, out = torch.zeros(1, 40), []
    for b in blocks:
        h = b(h)
        out.append(h.numel() * h.element_size())
    boundary = [out[stage[-1]] for stage in plan.stages[:-1]]
    params = [sum(p.numel() * p.element_size() for b in stage for p in blocks[b].parameters())
              + (sum(p.numel() * p.element_size() for p in heads[s].parameters())
                 if head_on_every_stage or s == plan.n_stages - 1 else 0)
              for s, stage in enumerate(plan.stages)]
    return boundary, params


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(ROOT / "results" / "study_mnist1d.json"))
    args = ap.parse_args()
    payload = json.loads(Path(args.results).read_text())
    best = study.tuned_runs(payload)
    c = next(iter(payload["runs"].values()))["config"]
    budgets = payload["summary"]["meta"]["budgets"]
    throughput = payload["summary"]["meta"]["throughput"]
    L = c["n_blocks"]
    pipe_work = payload["summary"]["pipeline_stage_flops"]  # backprop cut into L pipeline stages
    one = Plan.chunked(L, L)
    boundary, params = sizes(one, c, head_on_every_stage=False)
    shown = [m for m in ("greedy", "overlapping", "chunked2") if m in best] + [PIPELINED]
    print(f"speed-up over data-parallel backprop at equal hardware, held-out loss {c['target']}, "
          f"mean [min, max] over seeds; {throughput:.0e} FLOP/s per device")
    for name, link in LINKS.items():
        traffic = None
        if link is not None:
            traffic = {}
            for m in best:
                plan = make_plan(m, L)
                traffic[m] = Traffic.of(plan, *sizes(plan, c), link)
            traffic[PIPELINED] = Traffic.pipeline(boundary, params, link)
        ups = study.speedups(best, budgets, pipe_work, throughput, traffic)
        print(f"\n{name}")
        print(f"{'N':>6s} " + " ".join(f"{m:>20s}" for m in shown))
        for n in budgets:
            cells = []
            for m in shown:
                v = ups.get((m, n), [])
                cells.append(f"{np.mean(v):.2f} [{min(v):.2f}, {max(v):.2f}]"
                             if v and None not in v else "-")
            print(f"{n:6d} " + " ".join(f"{cell:>20s}" for cell in cells))


if __name__ == "__main__":
    main()
