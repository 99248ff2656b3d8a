"""The sequential runner: every stage in order, every step, in one process (the reference).

Synchronous semantics, exactly ``LocalNet.train_step``: stage s steps on batch t, an
overlapping loss's backward message reaches stage s-1 before it updates. It runs the same stage
program as the simulator and the distributed workers (``program.run_in_order`` answers its
requests at once) and records the same timeline format: stages take turns on one clock.
"""
import time

from tqdm.auto import tqdm

from .job import RunResult, stage_state
from .program import StepTimer, run_in_order, stage_program
from .timeline import Event


def run_sequential(job, progress: bool = False) -> RunResult:
    """Train ``job`` synchronously; returns a RunResult (history, timeline, params, stats, wall)."""
    if job.delay:
        raise ValueError(f"run_sequential: the sequential runner is synchronous, but this job has "
                         f"delay={job.delay}; run delayed overlap messages with simulate(job, costs) "
                         f"or run_distributed(job), or use job.replace(delay=0)")
    net = job.build()
    timers = [StepTimer(stage) for stage in net.stages]
    timeline = []
    bar = tqdm(total=job.n_steps, desc=f"sequential {job.plan.name or 'plan'}", disable=not progress)
    t0 = time.perf_counter()

    def compute(s, request):
        out, spans = timers[s].run(request.kind, request.fn)
        timeline.extend(Event(s, k, a - t0, b - t0, request.step) for k, a, b in spans)
        if request.kind == "update" and s == len(net.stages) - 1:
            bar.update()
        return out

    programs = [stage_program(stage, job) for stage in net.stages]
    per_stage = run_in_order(programs, job.n_steps, compute)
    wall = time.perf_counter() - t0
    bar.close()
    params = {k: v for s in range(len(net.stages)) for k, v in stage_state(net, s).items()}
    history = {"step": list(range(1, job.n_steps + 1)), "train_loss": [list(ls) for ls in zip(*per_stage)]}
    return RunResult(history, timeline, params, [{} for _ in net.stages], wall)
