"""The backprop baseline: the same model as one pipeline trained by the output loss alone.

``run_pipeline(job, ["gpipe", "1f1b"])`` splits the Job's blocks into its Plan's stages (the
output head joins the last stage), runs ``torch.distributed.pipelining`` with ``ScheduleGPipe``
or ``Schedule1F1B`` in one process per stage, and records a timeline per microbatch with module
hooks (the gaps are communication and the pipeline bubble). Gradients equal plain backprop on
the whole batch: each microbatch loss is a mean and the schedule averages over microbatches.

``schedule_timeline`` is the idealised twin: per-stage forward/backward seconds per microbatch
give the GPipe or 1F1B timeline with no communication cost. Its bubble is (K-1)/(M+K-1) of the
makespan for balanced stages, for both schedules (1F1B saves memory, not time).
"""
import os
import time
import warnings
from dataclasses import replace
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from ..local import cross_entropy
from .distributed import STARTUP_S, backend_and_device, options_from
from .job import RunResult
from .launch import launch
from .layout import resolve_order
from .mesh import Averager, Layout, check_replicas, device_mesh, shard
from .timeline import Event, fill_idle

SCHEDULES = ("gpipe", "1f1b")


def pipeline_model(job):
    """One nn.Sequential per stage of ``job.plan``: its blocks, plus the output head on the last."""
    blocks, heads = job.model.build(job.plan)
    K = job.plan.n_stages
    return [nn.Sequential(*[blocks[b] for b in idx], *([heads[-1]] if s == K - 1 else []))
            for s, idx in enumerate(job.plan.stages)]


def _record(module, stage, replica, clock):
    """Hooks that append forward/backward events of every microbatch to clock["events"]."""
    def start(*_):
        clock["start"] = time.perf_counter()

    def end(kind):
        def hook(*_):
            clock["events"].append(Event(stage, kind, clock["start"] - clock["t0"],
                                         time.perf_counter() - clock["t0"], clock["step"],
                                         replica))
        return hook
    module.register_forward_pre_hook(start)
    module.register_forward_hook(end("forward"))
    module.register_full_backward_pre_hook(start)
    module.register_full_backward_hook(end("backward"))


def _step(schedule, s, K, x, y):
    losses = []
    if s == 0:
        schedule.step(x)
    elif s == K - 1:
        schedule.step(target=y, losses=losses)
    else:
        schedule.step()
    return [float(v.detach()) for v in losses]


def _run_schedule(rank, job, name, n_microbatches, device, layout, groups, timeout):
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    s, r = layout.where(rank)
    stage_group, replica_group = groups
    module = pipeline_model(job)[s].to(device)
    optimizer = job.optimizer(list(module.parameters()))
    stage = PipelineStage(module, s, layout.K, device, group=stage_group)
    kind = ScheduleGPipe if name == "gpipe" else Schedule1F1B
    schedule = kind(stage, n_microbatches, loss_fn=cross_entropy)
    average = None if layout.D == 1 else \
        Averager(replica_group, layout, rank, timeout, staging=False)
    batches = (lambda t: job.batches(t)) if layout.D == 1 else \
        (lambda t: shard(job.batches(t), r, layout.D))
    x, y = (v.to(device) for v in batches(0))
    _step(schedule, s, layout.K, x, y)  # the first step infers shapes with an extra pass: discard
    module.zero_grad(set_to_none=True)
    clock = {"events": [], "step": 0}
    _record(module, s, r, clock)
    dist.barrier()
    clock["t0"] = t0 = time.perf_counter()
    losses, grads = [], None
    for t in range(job.n_steps):
        clock["step"] = t
        x, y = (v.to(device) for v in batches(t))
        losses.append(_step(schedule, s, layout.K, x, y))
        u0 = time.perf_counter()
        if average is not None:  # the replicas of this stage average before the update
            mean = torch.tensor(losses[-1])  # (M,) microbatch losses on the last stage, else (0,)
            average.reduce([p.grad for p in module.parameters()] + [mean], t)
            losses[-1] = mean.tolist()
            reduced = time.perf_counter()
            clock["events"].append(Event(s, "reduce", u0 - t0, reduced - t0, t, r))
            u0 = reduced
        if t == 0:
            grads = {f"{s}.{k}": p.grad.cpu().numpy().copy()
                     for k, p in module.named_parameters()}
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock["events"].append(Event(s, "update", u0 - t0, time.perf_counter() - t0, t, r))
    wall = time.perf_counter() - t0
    params = {f"{s}.{k}": p.detach().cpu().numpy().copy() for k, p in module.named_parameters()}
    return {"losses": losses, "timeline": [tuple(e) for e in clock["events"]], "grads": grads,
            "params": params, "wall": wall}


def pipeline_worker(rank, world, job, schedules, n_microbatches, opts):
    """A pipeline stage's process: one run per schedule name, each from the same initial weights.

    With replicas, ranks form a (K, D) mesh: each pipeline is one "stage" group (the K stages of
    replica r), and each stage averages its gradients over its "replica" group."""
    torch.set_num_threads(opts.threads or max(1, (os.cpu_count() or 1) // world))
    backend, device, _ = backend_and_device(opts, world)
    if backend != "nccl":
        device = torch.device("cpu")  # pipelining sends the stage's own tensors: keep them on CPU
    dist.init_process_group(backend, timeout=timedelta(seconds=max(opts.timeout, STARTUP_S)),
                            rank=rank, world_size=world)
    layout = Layout(world // opts.replicas, opts.replicas, opts.order)
    groups = (None, None)
    if layout.D > 1:
        mesh = device_mesh(layout, backend)
        groups = (mesh.get_group("stage"), mesh.get_group("replica"))
    with warnings.catch_warnings():  # stage 0's inputs need no grad: its backward hook still fires
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        parts = [_run_schedule(rank, job, name, n_microbatches, device, layout, groups,
                               opts.timeout) for name in schedules]
    dist.barrier()
    dist.destroy_process_group()
    return parts


def run_pipeline(job, schedules=SCHEDULES, n_microbatches=4, backend="auto", timeout=60.0,
                 threads=None, device="auto", replicas=1, *, options=None):
    """Backprop on ``job``'s model as a K-stage pipeline, once per schedule ("gpipe", "1f1b").

    replicas: D data-parallel pipelines (K·D processes); replica r pipelines shard r of each
    batch in ``n_microbatches`` microbatches, and each stage averages its gradients over its D
    replicas before the update. Returns {name: RunResult}: history holds the output loss,
    ``grads`` the first step's gradients named as in ``nn.Sequential(*pipeline_model(job))``,
    the timeline has every rank's events (one row per stage and replica) with its idle gaps.
    options: an ``Options`` holding backend, timeout, threads, device, replicas and the rank
    order at once (the one object ``run_distributed`` and the CLI take too), instead of the
    keywords.
    """
    opts = options_from("run_pipeline", options, backend=backend, timeout=timeout,
                        threads=threads, device=device, replicas=replicas)
    replicas = opts.replicas
    schedules = [schedules] if isinstance(schedules, str) else list(schedules)
    bad = [s for s in schedules if s not in SCHEDULES]
    if bad or not schedules:
        raise ValueError(f"run_pipeline: schedules must be names from {SCHEDULES}, got {schedules}")
    check_replicas("run_pipeline", replicas)
    batch = job.batches(0)[0].shape[0]
    check_replicas("run_pipeline", replicas, batch)
    if isinstance(n_microbatches, bool) or not isinstance(n_microbatches, int) \
            or n_microbatches < 1 or (batch // replicas) % n_microbatches:
        raise ValueError(f"run_pipeline: n_microbatches must be a positive int dividing the batch "
                         f"size per replica ({batch // replicas}), got {n_microbatches!r}")
    K = job.plan.n_stages
    if K < 2:
        raise ValueError("run_pipeline: the plan has 1 stage; a pipeline needs at least 2 "
                         "(for data-parallel backprop alone use run_distributed(job, "
                         "replicas=D) with Plan.backprop)")
    job.check_portable("run_pipeline")
    opts = replace(opts, order=resolve_order(opts.order, [job], replicas))  # the send window: unused
    layout = Layout(K, replicas, opts.order)
    parts = launch(pipeline_worker, (job, schedules, n_microbatches, opts), layout.world,
                   names=layout.names())
    out = {}
    for i, name in enumerate(schedules):
        ranks = [parts[layout.rank(s, 0)][i] for s in range(K)]  # replica 0 of each stage
        history = {"step": list(range(1, job.n_steps + 1)),
                   "train_loss": [[sum(v) / len(v)] for v in ranks[-1]["losses"]]}
        timeline = fill_idle(e for r in range(layout.world) for e in parts[r][i]["timeline"])
        merged = {k: v for p in ranks for k, v in p["params"].items()}
        grads = {k: v for p in ranks for k, v in p["grads"].items()}
        out[name] = RunResult(history, timeline, merged, [{} for _ in ranks],
                              max(parts[r][i]["wall"] for r in range(layout.world)), grads)
    return out


def _order(schedule, s, K, M):
    """The (kind, microbatch) order stage s executes in one step."""
    if schedule == "gpipe":
        return [("forward", m) for m in range(M)] + [("backward", m) for m in range(M)]
    warm = min(K - s - 1, M)  # 1F1B: fill, then alternate one forward and one backward, drain
    steady = [op for i in range(M - warm) for op in (("forward", warm + i), ("backward", i))]
    return [("forward", m) for m in range(warm)] + steady + \
        [("backward", m) for m in range(M - warm, M)]


def schedule_timeline(forward, backward, n_microbatches, schedule="gpipe", n_steps=1, update=None):
    """Idealised backprop pipeline timeline from per-stage seconds per microbatch (K lists).

    Forward m on stage s waits for forward m on s-1; backward m waits for backward m on s+1;
    each stage runs its schedule's order; steps are separated by a flush and the update.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule_timeline: schedule must be one of {SCHEDULES}, "
                         f"got {schedule!r}")
    K, M = len(forward), n_microbatches
    update = update or [0.0] * K
    if len(backward) != K or len(update) != K:
        raise ValueError(f"schedule_timeline: forward, backward and update need one value per "
                         f"stage, got {len(forward)}, {len(backward)}, {len(update)}")
    events, start = [], 0.0
    for t in range(n_steps):
        orders = [_order(schedule, s, K, M) for s in range(K)]
        done, free, pos = {}, [start] * K, [0] * K
        while any(pos[s] < len(orders[s]) for s in range(K)):
            for s in range(K):
                while pos[s] < len(orders[s]):
                    kind, m = orders[s][pos[s]]
                    dep = (("forward", s - 1, m) if s > 0 else None) if kind == "forward" else \
                        (("backward", s + 1, m) if s < K - 1 else ("forward", s, m))
                    if dep is not None and dep not in done:
                        break
                    begin = max(free[s], done[dep] if dep else start)
                    cost = (forward if kind == "forward" else backward)[s]
                    free[s] = done[kind, s, m] = begin + cost
                    events.append(Event(s, kind, begin, free[s], t))
                    pos[s] += 1
        flush = max(free)
        events += [Event(s, "update", flush, flush + update[s], t) for s in range(K)]
        start = flush + max(update)
    return fill_idle(events)
