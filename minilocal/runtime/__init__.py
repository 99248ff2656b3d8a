"""Runners for local-update training: sequential, simulated asynchronous, and one process per stage.

    job = Job(ModelSpec(models.mlp, {"width": 64}), Plan.greedy(4), RandomBatches(64), n_steps=200)
    ref = run_sequential(job)                       # the reference: stages in order, every step
    sim = simulate(job, costs=[1, 1, 1, 1])         # asynchronous schedule in simulated time
    run = run_distributed(job)                      # K processes, torch.distributed
    run = run_distributed(job, options=Options(timeout=30, replicas=2))  # settings as one object
    dp = run_distributed(job, replicas=2)           # K stages x 2 data-parallel replicas
    plot_timelines({"simulated": sim.timeline, "processes": run.timeline}); plt.show()

All runners return a RunResult with the same history, timeline and parameter formats; with
synchronous semantics their parameters are bitwise equal (with replicas: equal up to float
rounding). ``run_pipeline`` is the backprop baseline on ``torch.distributed.pipelining`` (GPipe,
1F1B), with replicas too.
"""
from .distributed import Options, run_distributed
from .job import ArrayBatches, Job, ModelSpec, RandomBatches, RunResult, adam, mnist1d_batches, sgd
from .launch import WorkerError
from .pipeline import pipeline_model, run_pipeline, schedule_timeline
from .sequential import run_sequential
from .simulator import measure_costs, simulate
from .timeline import (Event, makespan, plot_timeline, plot_timelines, plot_utilization,
                       rank_utilization, utilization)

__all__ = ["ArrayBatches", "Event", "Job", "ModelSpec", "Options", "RandomBatches", "RunResult",
           "WorkerError",
           "adam", "makespan", "measure_costs", "mnist1d_batches", "pipeline_model",
           "plot_timeline", "plot_timelines", "plot_utilization", "rank_utilization",
           "run_distributed", "run_pipeline", "run_sequential", "schedule_timeline", "sgd",
           "simulate", "utilization"]
