"""Pareto views of a sweep: steps and idealized time to a target loss vs batch size, and loss vs
idealized time with each method's lower envelope over batch sizes and learning rates.

A record is what ``sweep.run_one`` returns. Its learning rate is tuned per (method, batch): the
run that reaches the target in the fewest steps wins; when none reaches it, the lowest final loss.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .cost import fastest_at_equal_hardware, idealized_time, step_flops


def steps_to_target(record: Mapping[str, Any], target: float) -> int | None:
    """First measured step whose loss is <= target, or None when the run never got there."""
    return next((s for s, l in zip(record["steps"], record["loss"]) if l <= target), None)


def time_curve(record: Mapping[str, Any], throughput: float = 1e12,
               devices_per_stage: int | None = None) -> list[float]:
    """Idealized seconds at each measured step of ``record`` (see cost.idealized_time)."""
    batch = record["config"]["batch"]
    return [idealized_time(s, record["stage_flops"], batch, throughput, devices_per_stage)
            for s in record["steps"]]


def _rank(record, target):
    steps = steps_to_target(record, target)
    return (0, steps, record["config"]["lr"]) if steps is not None else (1, min(record["loss"]), 0)


def best_runs(results: Mapping[str, Mapping[str, Any]],
              target: float) -> dict[str, dict[int, Mapping[str, Any]]]:
    """{method: {batch: record}}: the best learning rate for each (method, batch) at ``target``."""
    best = {}
    for record in results.values():
        c = record["config"]
        current = best.setdefault(c["method"], {}).get(c["batch"])
        if current is None or _rank(record, target) < _rank(current, target):
            best[c["method"]][c["batch"]] = record
    return {m: dict(sorted(runs.items())) for m, runs in best.items()}


def frontier(results: Mapping[str, Mapping[str, Any]], target: float, throughput: float = 1e12,
             devices_per_stage: int | None = None) -> list[dict[str, Any]]:
    """One row per (method, batch): lr, steps, idealized seconds and FLOPs to ``target`` (None
    where no learning rate reached it)."""
    rows = []
    for method, runs in best_runs(results, target).items():
        for batch, r in runs.items():
            steps = steps_to_target(r, target)
            reached = steps is not None
            rows.append(dict(method=method, batch=batch, lr=r["config"]["lr"], steps=steps,
                             time=idealized_time(steps, r["stage_flops"], batch, throughput,
                                                 devices_per_stage) if reached else None,
                             flops=steps * step_flops(r["stage_flops"], batch) if reached else None))
    return rows


def equal_hardware(results: Mapping[str, Mapping[str, Any]], target: float,
                   budgets: Iterable[int], throughput: float = 1e12,
                   pipeline_work: Sequence[float] | None = None) -> list[dict[str, Any]]:
    """Fastest idealized time to ``target`` per (N, method) on N devices in all (cost.
    fastest_at_equal_hardware), over batch sizes with each one's best learning rate, and its
    speed-up over data-parallel backprop on the same N. With ``pipeline_work`` (the V_s of backprop
    cut into K stages, cost.pipeline_stage_flops), backprop's runs are also timed as GPipe/1F1B on
    the same N (cost.PIPELINED). Rows: n_devices, method, batch, steps, time, speedup."""
    runs = [dict(method=method, steps=steps_to_target(r, target), stage_flops=r["stage_flops"],
                 batch=batch)
            for method, by_batch in best_runs(results, target).items()
            for batch, r in by_batch.items()]
    runs = [r for r in runs if r["steps"] is not None]
    rows = []
    for n in budgets:
        fastest = fastest_at_equal_hardware(runs, n, throughput, pipeline_work)
        base = fastest.get("backprop", (None,))[0]
        for name, (t, r) in fastest.items():
            rows.append(dict(n_devices=n, method=name, batch=r["batch"], steps=r["steps"], time=t,
                             speedup=base / t if base and t else None))
    return rows


def lower_envelope(curves: Sequence[tuple[Sequence[float], Sequence[float]]],
                   ) -> tuple[list[float], list[float]]:
    """Best loss reached by each time over several curves: [(times, losses), ...] -> (times, losses).

    Each curve counts with its running minimum (a run can be stopped at its best point); the
    envelope is evaluated at the union of all curves' times, where at least one curve has started.
    """
    events = sorted({t for times, _ in curves for t in times})
    running = []
    for times, losses in curves:
        best, mins = math.inf, []
        for loss in losses:
            best = min(best, loss)
            mins.append(best)
        running.append((list(times), mins))
    env_t, env_l = [], []
    for t in events:
        value = math.inf
        for times, mins in running:
            i = next((k for k in range(len(times) - 1, -1, -1) if times[k] <= t), None)
            if i is not None:
                value = min(value, mins[i])
        if math.isfinite(value):
            env_t.append(t)
            env_l.append(value)
    return env_t, env_l


def __getattr__(name):  # the plots live in minilocal.viz.pareto; the old names still work
    if name in ("plot_scaling", "plot_loss_vs_time"):
        from ..viz import pareto as _viz

        return getattr(_viz, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
