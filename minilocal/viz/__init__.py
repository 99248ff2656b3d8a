"""Every picture of the course in one place, in one style (``style``: stage, method and
timeline-kind colours). Each plot draws on ``ax`` when given (a new figure otherwise) and
returns ``(fig, ax)`` (``axes`` for figures with several panels); callers end the cell with
``plt.show()``.

* ``plots``: the gradient-flow diagram of a Plan (``plot_plan``), learning curves
  (``plot_history``, ``plot_compare``).
* ``pareto``, ``similarity``: the compute study's figures (``plot_scaling``,
  ``plot_loss_vs_time``, ``plot_similarity``).
* timelines of the runtimes (``plot_timeline``, ``plot_timelines``, ``plot_utilization``; drawn
  by ``minilocal.runtime.timeline``).
* ``widgets``: the plan explorer (ipywidgets); ``dashboard``: live loss curves while training.

Names load on first use, so ``import minilocal.viz`` is cheap and needs no ipywidgets until a
widget is asked for.
"""
import importlib

_MODULES = {  # where each name lives: loaded on first use
    "minilocal.viz.style": ("stage_color", "method_color", "KIND_COLORS"),
    "minilocal.viz.plots": ("plot_plan", "plot_history", "plot_compare", "final_metrics",
                            "output_curve"),
    "minilocal.viz.pareto": ("plot_scaling", "plot_loss_vs_time"),
    "minilocal.viz.similarity": ("plot_similarity",),
    "minilocal.runtime.timeline": ("plot_timeline", "plot_timelines", "plot_utilization"),
    "minilocal.viz.widgets": ("plan_explorer", "show_plan", "plan_png"),
    "minilocal.viz.dashboard": ("Dashboard",),
}
_LAZY = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
