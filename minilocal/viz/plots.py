"""The one plotting style: the gradient-flow diagram of a Plan and learning curves per stage.

Every function draws on ``ax`` (a new figure when None) and returns ``(fig, ax)``; callers end the
cell with ``plt.show()``. Stage s is always drawn in ``stage_color(s)``, so a loss, its head, its
bracket and its learning curve share one colour across every plot of the course.

Code that runs off the main thread (widget callbacks) draws on ``offscreen_figure`` and shows
``png_bytes`` of it instead: pyplot's list of open figures is not thread-safe.

Diagram artists carry a ``gid`` (``block-l``, ``stage-s``, ``head-s``, ``loss-s``, ``bracket-s``)
so tests and curious readers can find them with ``ax.findobj``.
"""
from __future__ import annotations

import io
import struct
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch

from ..plan import Plan
from .style import method_color, stage_color

if TYPE_CHECKING:
    from matplotlib.axes import Axes

METRICS = {"train_loss": "train loss", "test_loss": "test loss", "test_acc": "test accuracy"}
MAX_DIAGRAM_BLOCKS = 32  # wider diagrams stop being readable at any figure size

_BOX_W, _BOX_H, _PITCH = 1.0, 0.6, 1.5   # block box width/height and the distance between blocks
_HEAD_Y, _LOSS_Y, _ROW_H = -1.1, -1.9, 0.32


def _new_ax(ax, size):
    if ax is None:
        fig, ax = plt.subplots(figsize=size)
        return fig, ax
    if not hasattr(ax, "figure") or not hasattr(ax, "add_patch"):
        raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
    return ax.figure, ax


def offscreen_figure(figsize: tuple[float, float], dpi: float = 100) -> tuple[Figure, Axes]:
    """A Figure with one Axes that pyplot never sees: safe on any thread, never shown inline."""
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes of exactly figsize × dpi pixels (no cropping)."""
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) in pixels of PNG bytes, read from the header."""
    png = bytes(png)
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise ValueError(f"png_size: not PNG bytes (they start {png[:16]!r}); pass what png_bytes returns")
    return struct.unpack(">II", png[16:24])


def _bracket_rows(plan):
    """Give each loss a bracket row; brackets whose block ranges overlap get different rows."""
    rows, ends = [], []  # ends[r] = last block covered by the latest bracket in row r
    for s in range(plan.n_stages):
        first, last = plan.trained_by(s)[0], plan.trained_by(s)[-1]
        row = next((r for r, end in enumerate(ends) if end < first), len(ends))
        if row == len(ends):
            ends.append(last)
        ends[row] = last
        rows.append(row)
    return rows


def _arrow(ax, start, end, color="0.35", style="-|>", **kwargs):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=12, color=color,
                                 shrinkA=0, shrinkB=0, **kwargs))


def _check_plan(plan, where):
    if not isinstance(plan, Plan):
        raise TypeError(f"{where}: plan must be a minilocal.Plan, got {type(plan).__name__}; "
                        f"build one with e.g. Plan.overlapping(4)")
    if plan.n_blocks > MAX_DIAGRAM_BLOCKS:
        raise ValueError(f"{where}: plan has {plan.n_blocks} blocks; the diagram is readable up to "
                         f"{MAX_DIAGRAM_BLOCKS}; draw a smaller plan with the same structure")
    return plan


def plan_figsize(plan: Plan) -> tuple[float, float]:
    """(width, height) in inches that fit the diagram of ``plan`` (wider with blocks, taller with
    bracket rows)."""
    n_rows = max(_bracket_rows(_check_plan(plan, "plan_figsize"))) + 1
    return max(5.0, 1.25 * plan.n_blocks + 1.5), 3.2 + 0.35 * n_rows


def plot_plan(plan: Plan, ax: Axes | None = None) -> tuple[Figure, Axes]:
    """Gradient-flow diagram: blocks in a row, a head and loss under each stage's end, and one
    coloured bracket per loss over the blocks it trains (``plan.trained_by(s)``); returns (fig, ax)."""
    _check_plan(plan, "plot_plan")
    rows = _bracket_rows(plan)
    n_rows = max(rows) + 1
    fig, ax = _new_ax(ax, plan_figsize(plan))
    left = lambda b: b * _PITCH
    right = lambda b: b * _PITCH + _BOX_W
    centre = lambda b: b * _PITCH + _BOX_W / 2

    for s, stage in enumerate(plan.stages):  # stage background: which blocks share a device
        pad = 0.15
        ax.add_patch(FancyBboxPatch((left(stage[0]) - pad, -pad), right(stage[-1]) - left(stage[0]) + 2 * pad,
                                    _BOX_H + 2 * pad, boxstyle="round,pad=0.02", linewidth=1,
                                    linestyle="--", edgecolor=stage_color(s), facecolor=stage_color(s),
                                    alpha=0.12, gid=f"stage-{s}"))
    _arrow(ax, (left(0) - 0.6, _BOX_H / 2), (left(0), _BOX_H / 2))
    ax.text(left(0) - 0.7, _BOX_H / 2, "x", ha="right", va="center")
    for b in range(plan.n_blocks):
        ax.add_patch(FancyBboxPatch((left(b), 0), _BOX_W, _BOX_H, boxstyle="round,pad=0.02",
                                    facecolor="white", edgecolor="0.2", linewidth=1.2, gid=f"block-{b}"))
        ax.text(centre(b), _BOX_H / 2, f"b{b}", ha="center", va="center", fontsize=10)
        end = right(b) + (_PITCH - _BOX_W if b < plan.n_blocks - 1 else 0.4)
        _arrow(ax, (right(b), _BOX_H / 2), (end, _BOX_H / 2))

    for s, stage in enumerate(plan.stages):
        c, x = stage_color(s), centre(stage[-1])
        _arrow(ax, (x, 0), (x, _HEAD_Y + 0.2))
        ax.add_patch(FancyBboxPatch((x - 0.35, _HEAD_Y - 0.2), 0.7, 0.4, boxstyle="round,pad=0.02",
                                    facecolor=c, edgecolor=c, alpha=0.35, gid=f"head-{s}"))
        ax.text(x, _HEAD_Y, f"head {s}", ha="center", va="center", fontsize=8)
        ax.plot([x, x], [_HEAD_Y - 0.2, _LOSS_Y + 0.22], color=c, linewidth=1)
        ax.add_patch(Circle((x, _LOSS_Y), 0.22, facecolor=c, edgecolor="none", gid=f"loss-{s}"))
        ax.text(x, _LOSS_Y, f"ℓ{s}", ha="center", va="center", fontsize=9, color="white")

        trained = plan.trained_by(s)  # the bracket: the blocks this loss trains, gradient flowing left
        y = _BOX_H + 0.35 + _ROW_H * rows[s]
        x0, x1 = left(trained[0]) + 0.05, right(trained[-1]) - 0.05
        ax.plot([x0, x0, x1, x1], [y - 0.1, y, y, y - 0.1], color=c, linewidth=2, gid=f"bracket-{s}")
        _arrow(ax, (x1, y), (x0 + 0.02, y), color=c, style="-|>", linewidth=0)
        ax.text(x1 + 0.05, y, f"ℓ{s}", color=c, fontsize=8, va="center")

    ax.set_xlim(left(0) - 1.1, right(plan.n_blocks - 1) + 0.8)
    ax.set_ylim(_LOSS_Y - 0.5, _BOX_H + 0.6 + _ROW_H * n_rows)
    ax.set_aspect("equal")
    ax.axis("off")
    title = plan.name or "plan"
    ax.set_title(f"{title}: {plan.n_stages} stage(s), overlap {plan.overlap}\n"
                 f"bracket ℓs = blocks trained by loss ℓs (gradient flows ←)", fontsize=9)
    return fig, ax


def _check_history(history, metric, where):
    if metric not in METRICS:
        raise ValueError(f"{where}: metric must be one of {sorted(METRICS)}, got {metric!r}")
    if not isinstance(history, dict) or "step" not in history or metric not in history:
        keys = sorted(history) if isinstance(history, dict) else type(history).__name__
        raise ValueError(f"{where}: history must be a dict with 'step' and {metric!r} (the format "
                         f"numpy_core.train returns), got {keys}")
    steps, rows = history["step"], history[metric]
    if len(steps) != len(rows):
        raise ValueError(f"{where}: history has {len(steps)} steps but {len(rows)} {metric!r} rows; "
                         f"there must be one row (one value per stage) per step")
    if not rows:
        raise ValueError(f"{where}: history is empty; train for at least one evaluation step")
    lengths = sorted({len(r) if hasattr(r, "__len__") else 0 for r in rows})
    if len(lengths) != 1 or lengths[0] == 0:
        raise ValueError(f"{where}: every {metric!r} row must hold one value per stage, all of the "
                         f"same length; got rows of lengths {lengths}")
    return np.asarray(steps), np.asarray(rows, dtype=float)  # (N,), (N, K)


def output_curve(history: dict[str, Any],
                 metric: str = "test_acc") -> tuple[np.ndarray, np.ndarray]:
    """The output head's curve: steps (N,) and the last stage's ``metric`` values (N,)."""
    steps, values = _check_history(history, metric, "output_curve")
    return steps, values[:, -1]


def final_metrics(history: dict[str, Any]) -> dict[str, float]:
    """The output head's train loss, test loss and test accuracy at the last evaluation (a dict)."""
    return {m: float(output_curve(history, m)[1][-1]) for m in METRICS}


def plot_history(history: dict[str, Any], ax: Axes | None = None,
                 metric: str = "test_acc") -> tuple[Figure, Axes]:
    """One curve per stage head (coloured like the diagram) of ``metric`` against step; returns (fig, ax)."""
    steps, values = _check_history(history, metric, "plot_history")
    fig, ax = _new_ax(ax, (5, 3.2))
    n_stages = values.shape[1]
    for s in range(n_stages):
        label = f"head {s}" + (" (output)" if s == n_stages - 1 else "")
        ax.plot(steps, values[:, s], color=stage_color(s), marker="o", markersize=3, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(METRICS[metric])
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig, ax


def plot_compare(histories: dict[str, dict[str, Any]], ax: Axes | None = None,
                 metric: str = "test_acc") -> tuple[Figure, Axes]:
    """The output head's ``metric`` for several methods ({name: history}) on one axes; returns (fig, ax)."""
    if not isinstance(histories, dict) or not histories:
        raise ValueError("plot_compare: histories must be a non-empty dict {method name: history}, "
                         f"got {type(histories).__name__}")
    fig, ax = _new_ax(ax, (5, 3.2))
    colors = [method_color(name) for name in histories]
    if len(set(colors)) < len(colors):  # two variants of one method: tell them apart
        colors = [f"C{i}" for i in range(len(colors))]
    for color, (name, history) in zip(colors, histories.items()):
        steps, values = output_curve(history, metric)
        ax.plot(steps, values, color=color, marker="o", markersize=3, label=str(name))
    ax.set_xlabel("step")
    ax.set_ylabel(f"{METRICS[metric]} (output head)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig, ax
