"""Plots of the compute study (``minilocal.compute.pareto``): time to a target vs batch size, and
loss vs idealized time or FLOPs. Each returns ``(fig, ax)`` (``axes`` for side-by-side panels) in
the course's colours (``style.method_color``)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from ..compute.pareto import best_runs, lower_envelope, time_curve
from ..compute.cost import step_flops
from .style import method_color

if TYPE_CHECKING:  # pyplot is imported only when a plot is drawn
    import numpy as np
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def plot_scaling(rows: Sequence[Mapping[str, Any]], target: float,
                 ) -> tuple[Figure, np.ndarray]:
    """Steps and idealized time to ``target`` vs batch size, one line per method; returns
    ``(fig, axes)``, the two axes side by side."""
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in ((axes[0], "steps", "steps to target"),
                           (axes[1], "time", "idealized time to target (s)")):
        for m in methods:
            pts = [(r["batch"], r[key]) for r in rows if r["method"] == m and r[key] is not None]
            if pts:
                ax.plot(*zip(*pts), "o-", color=method_color(m), label=m)
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel=label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"time to train loss {target:g}: where data parallelism stops paying")
    fig.tight_layout()
    return fig, axes


def plot_loss_vs_time(results: Mapping[str, Mapping[str, Any]], target: float,
                      throughput: float = 1e12, devices_per_stage: int | None = None,
                      x: Literal["time", "flops"] = "time") -> tuple[Figure, Axes]:
    """Loss vs idealized time (x='time') or total FLOPs (x='flops'): faint lines are each batch
    size's best-lr run, the thick line is the method's lower envelope over all runs; returns
    ``(fig, ax)``."""
    import matplotlib.pyplot as plt

    if x not in ("time", "flops"):
        raise ValueError(f"plot_loss_vs_time: x must be 'time' or 'flops', got {x!r}")
    best = best_runs(results, target)

    def xs(r):
        if x == "time":
            return time_curve(r, throughput, devices_per_stage)
        return [s * step_flops(r["stage_flops"], r["config"]["batch"]) for s in r["steps"]]

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for m, runs in best.items():
        for r in runs.values():
            ax.plot(xs(r)[1:], r["loss"][1:], color=method_color(m), alpha=0.25, lw=0.8)
        curves = [(xs(r)[1:], r["loss"][1:]) for r in results.values()
                  if r["config"]["method"] == m and len(r["steps"]) > 1]
        ax.step(*lower_envelope(curves), where="post", color=method_color(m), lw=2.2, label=m)
    ax.axhline(target, color="gray", ls="--", lw=1)
    ax.set(xscale="log", yscale="log", ylabel="train loss (output head)",
           xlabel="idealized time (s)" if x == "time" else "total FLOPs")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig, ax
