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

_LAZY = {
    "stage_color": "style", "method_color": "style", "KIND_COLORS": "style",
    "plot_plan": "plots", "plot_history": "plots", "plot_compare": "plots",
    "final_metrics": "plots", "output_curve": "plots",
    "plot_scaling": "pareto", "plot_loss_vs_time": "pareto",
    "plot_similarity": "similarity",
    "plot_timeline": "..runtime.timeline", "plot_timelines": "..runtime.timeline",
    "plot_utilization": "..runtime.timeline",
    "plan_explorer": "widgets", "show_plan": "widgets", "plan_png": "widgets",
    "Dashboard": "dashboard",
}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        where = _LAZY[name]
        module = importlib.import_module(where[1:] if where.startswith("..") else f".{where}",
                                         "minilocal" if where.startswith("..") else __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
