"""The sequential runner: every stage in order, every step, in one process (the reference).

Synchronous semantics, exactly ``LocalNet.train_step``: stage s steps on batch t, an
overlapping loss's backward message reaches stage s-1 at once, then every stage updates. It
records the same timeline format as the other runners: stages take turns on one clock.
"""
import time

from tqdm.auto import tqdm

from ..local import receive_grad, stage_step
from .job import RunResult, stage_state
from .program import StepTimer
from .timeline import Event


def run_sequential(job, progress=False):
    """Train ``job`` synchronously; returns a RunResult (history, timeline, params, stats, wall)."""
    if job.delay:
        raise ValueError(f"run_sequential: the sequential runner is synchronous, but this job has "
                         f"delay={job.delay}; run delayed overlap messages with simulate(job, costs) "
                         f"or run_distributed(job), or use job.replace(delay=0)")
    net = job.build()
    stages, receivers = net.stages, job.receivers()
    timers = [StepTimer(stage) for stage in stages]
    timeline, losses = [], []
    t0 = time.perf_counter()

    def timed(s, t, kind, fn):
        out, spans = timers[s].run(kind, fn)
        timeline.extend(Event(s, k, a - t0, b - t0, t) for k, a, b in spans)
        return out

    for t in tqdm(range(job.n_steps), desc=f"sequential {job.plan.name or 'plan'}",
                  disable=not progress):
        x, y = job.batches(t)
        results, h = [], x
        for s, stage in enumerate(stages):
            res = timed(s, t, "step", lambda: stage_step(stage, h, y, update=False))
            if res.grad_in is not None:
                timed(s - 1, t, "backward",
                      lambda: receive_grad(stages[s - 1], res.grad_in, receivers[s - 1]))
            results.append(res)
            h = res.x_out
        for s, stage in enumerate(stages):
            timed(s, t, "update", stage.update)
        losses.append([float(r.loss) for r in results])
    wall = time.perf_counter() - t0
    params = {k: v for s in range(len(stages)) for k, v in stage_state(net, s).items()}
    history = {"step": list(range(1, job.n_steps + 1)), "train_loss": losses}
    return RunResult(history, timeline, params, [{} for _ in stages], wall)
