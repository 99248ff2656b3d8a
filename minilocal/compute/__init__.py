"""Compute efficiency: FLOPs per block, the idealized-time cost model, sweeps, Pareto, gradient similarity.

The plots of these studies live in ``minilocal.viz`` (``plot_scaling``, ``plot_loss_vs_time``,
``plot_similarity``); the old names here still work.
"""
from .cost import describe_cost_model, idealized_time, stage_flops, step_flops, step_time
from .flops import Flops, count_flops, model_flops
from .pareto import best_runs, frontier, lower_envelope, steps_to_target, time_curve
from .similarity import cosine, gradient_similarity, plan_gradients, similarity_over_training
from .sweep import load_results, make_plan, run_one, sweep, sweep_configs

__all__ = ["Flops", "best_runs", "cosine", "count_flops", "describe_cost_model", "frontier",
           "gradient_similarity", "idealized_time", "load_results", "lower_envelope", "make_plan",
           "model_flops", "plan_gradients", "plot_loss_vs_time", "plot_scaling", "plot_similarity",
           "run_one", "similarity_over_training", "stage_flops", "step_flops", "step_time",
           "steps_to_target", "sweep", "sweep_configs", "time_curve"]


_PLOTS = {"plot_scaling": "pareto", "plot_loss_vs_time": "pareto", "plot_similarity": "similarity"}


def __getattr__(name):
    if name in _PLOTS:
        import importlib

        return getattr(importlib.import_module(f"..viz.{_PLOTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
