"""The distributed runner: one process per stage (and replica), messages over torch.distributed.

Every rank builds only its own stage from the Job's recipe (same seed, so the same initial
weights; ``mesh.build_stage``) and runs the shared stage program (``program.py``), answering its
requests with point-to-point messages:

* forward: stage s sends its detached output of step t and the batch's labels to stage s+1
  (only stage 0 reads the batch source). Greedy and chunked plans send nothing else.
* backward (overlapping plans only): stage s sends ``grad_in`` of step t to stage s-1, which
  applies it at its update t + ``Job.delay`` (``receive_grad`` through the kept graph when the
  delay is 0, ``receive_stale_grad`` recomputing step t's forward otherwise). With delay 0 (synchronous)
  the run equals the sequential runner bitwise; with delay d it equals ``simulate`` with the
  same delay bitwise, whatever the timing, because the Job alone fixes which message meets which
  update. (Bitwise also needs equal torch thread counts: a matmul's sum order depends on them;
  compare with ``threads=1`` here and ``torch.set_num_threads(1)`` in the reference.)

Receives are posted ahead (``window`` activations, delay + 1 gradients), sends stay in flight up
to ``window`` deep, every request is waited on, and a message that does not complete within
``timeout`` seconds raises ``PeerTimeout`` naming the stage and its peer (a lost peer:
``PeerError``); both count as consequences, so the launcher reports the failing stage first.
Every stage also beats the launcher's deadline (``launch.beat``), so a stage stuck in a step is
stopped too. Before any message is sent, batch 0 goes along the chain of stages, each running
only itself with the sequential runner's input checks (``mesh.chain_specs``): a bad batch fails
on stage 0 with the sequential error, and every stage learns its message shapes.

Replicas (``replicas=D``): K·D processes on a (K, D) device mesh. Replica r of stage 0 reads
shard r of each batch; replica r of a stage talks only to
replica r of its neighbours; before each update the D replicas of a stage average their
gradients (and loss) with a bucketed all-reduce over the mesh's "replica" group
(``mesh.Averager``), after the backward message has been applied, so a run equals the
full-batch one up to float rounding. K = 1 is data-parallel backprop.

Rank order (``order``, ``layout.py``): which rank is replica r of stage s. torchrun puts
consecutive ranks on one node, so "replicas-together" (rank s·D + r, the default) keeps each
stage's gradient all-reduce on a node and sends activations between nodes; "stages-together"
(rank r·K + s) keeps each replica's chain of stages, and so its activations and backward
messages, on a node and sends the all-reduce between nodes; "auto" compares the two traffics'
bytes per step (a stage's all-reduce: 2·(D-1)/D of its parameter bytes from each replica,
against the activation, labels and backward messages its replicas send) and keeps the heavier
one on the node. The device mesh is built from the order's rank table.

Devices and backends (``backend="auto"``): gloo on CPU; NCCL with one GPU per process when the
node has at least as many GPUs as processes; with fewer GPUs, gloo with host staging (a stage
computes on its GPU, tensors go through CPU memory for each message: NCCL refuses two ranks on
one GPU). Timelines use each process's clock from a common start barrier.

Launch: ``run_distributed(job)`` from Python or a notebook (``launch.py`` starts the workers: forks
of a warm forkserver on Linux, which later calls reuse; ``MINILOCAL_START_METHOD=spawn`` for fresh
interpreters), or
``torchrun --nproc-per-node=K -m minilocal train ...`` (see ``python -m minilocal train --help``);
several nodes: the same torchrun line on each, with ``--rank-order`` to choose what stays on a
node.
Under torchrun each worker exits when its agent dies (``watch_parent``), so a killed node leaves
no orphans and its peers fail within ``timeout`` (measured on loopback, two nodes: the killed
agent's worker is gone in 0.1-0.3 s, the other node's torchrun exits with an error in ~1.5 s).
torchrun itself still: restarts the whole group if ``--max-restarts`` > 0 (from step 0: this
runner keeps no checkpoint); after its workers *succeed*, waits up to 300 s for every other
agent (its exit barrier, not settable from its command line), so an agent lost after the end
still costs that wait; and when the agent hosting the c10d store dies, the others stop with a
RendezvousConnectionError.
"""
import os
import resource
import time
from dataclasses import dataclass, replace
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .job import Job, RunResult
from .launch import beat, launch, watch_parent
from .mesh import (Averager, Layout, build_stage, chain_specs, check_order, check_replicas,
                   own_state, param_bytes, replica_group, resolve_order, shard)
from .program import Compute, Send, StepTimer, stage_program
from .timeline import Event, as_timeline
from .links import Links, stall_s  # noqa: F401  (the transport; benchmarks import Links from here)


STARTUP_S = 120  # process-group timeout: a loaded machine may take long to start every worker


@dataclass(frozen=True)
class Options:
    """How the workers run: backend, send window, timeout, threads, ``device`` ("auto": GPUs
    when present; "cpu": gloo on CPU even beside GPUs), ``replicas`` (data-parallel copies of
    each stage; they change what is computed only by float rounding) and ``order`` (the rank
    order on the mesh: "replicas-together", "stages-together" or "auto"; ``layout.py``)."""
    backend: str = "auto"
    window: int = 2
    timeout: float = 60.0
    threads: int = None
    device: str = "auto"
    replicas: int = 1
    order: str = "replicas-together"

    def __post_init__(self):
        if self.backend not in ("auto", "gloo", "nccl"):
            raise ValueError(f"run_distributed: backend must be 'auto', 'gloo' or 'nccl', "
                             f"got {self.backend!r}")
        if self.device not in ("auto", "cpu") or (self.device, self.backend) == ("cpu", "nccl"):
            raise ValueError(f"run_distributed: device must be 'auto' or 'cpu' (and 'cpu' needs "
                             f"backend 'gloo' or 'auto'), got device={self.device!r} with "
                             f"backend={self.backend!r}")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"run_distributed: window must be an int >= 1, got {self.window!r}")
        if not isinstance(self.timeout, (int, float)) or not self.timeout > 0:
            raise ValueError(f"run_distributed: timeout must be seconds > 0, got {self.timeout!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"run_distributed: threads must be None or an int >= 1, "
                             f"got {self.threads!r}")
        check_replicas("run_distributed", self.replicas)
        check_order("run_distributed", self.order)


def options_from(where, options, **given):
    """The run's Options: ``options`` itself, or one made from the keyword arguments ``given``
    (each runner's own keywords). Giving both is refused, naming the keywords that clash."""
    if options is None:
        return Options(**given)
    if not isinstance(options, Options):
        raise TypeError(f"{where}: options must be a minilocal.runtime.Options, got "
                        f"{type(options).__name__}")
    default = Options()
    clash = [k for k, v in given.items() if v != getattr(default, k)]
    if clash:
        raise ValueError(f"{where}: give the run's settings either as options=Options(...) or as "
                         f"keywords, not both: got options and {', '.join(clash)}")
    return options


def backend_and_device(opts, world):
    """(backend, device, staging) for this process from LOCAL_RANK and the GPUs on its node."""
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", 0)))
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    n_gpu = torch.cuda.device_count() if opts.device == "auto" else 0
    backend = opts.backend
    if backend == "auto":
        backend = "nccl" if n_gpu >= per_node else "gloo"
    if backend == "nccl":
        if n_gpu < per_node:
            raise RuntimeError(f"NCCL needs one GPU per process: {per_node} processes on this node "
                               f"but {n_gpu} GPU(s); use backend='gloo' (host staging) or 'auto'")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        return backend, device, False
    device = torch.device("cuda", local % n_gpu) if n_gpu else torch.device("cpu")
    return backend, device, device.type == "cuda"


def drive(program, links, timer, t0, timeline, on_step=None):
    """Answer the stage program's requests for real; returns its result (the losses)."""
    value, limit = None, stall_s(links.opts)
    while True:
        beat(limit)
        try:
            request = program.send(value)
        except StopIteration as done:
            return done.value
        if isinstance(request, Compute):
            value, spans = timer.run(request.kind, request.fn)
            timeline.extend(Event(links.stage, k, a - t0, b - t0, request.step, links.replica)
                            for k, a, b in spans)
            if request.kind == "update":
                beat(limit, steps=1)
                if on_step is not None:
                    on_step()
        elif isinstance(request, Send):
            links.send(request.channel, request.value, request.step)
            value = None
        else:
            value = links.recv(request.channel, request.step)


def run_job(rank, world, job, opts, device, staging, on_step=None, group=None):
    """One Job on this rank, inside an initialized process group; returns plain data.

    group: this rank's replica group (from the mesh) when ``opts.replicas`` > 1."""
    layout = Layout(job.plan.n_stages, opts.replicas, opts.order)
    if layout.world != world:
        raise ValueError(f"the plan has {layout.K} stages x {layout.D} replica(s) = "
                         f"{layout.world} processes, but {world} were started; start one process "
                         f"per stage and replica (torchrun --nproc-per-node={layout.world})")
    beat(STARTUP_S)  # building the stage and meeting the others: startup time
    s, r = layout.where(rank)
    stage, state, model_bytes = build_stage(job, s, device)
    batches = job.batches if layout.D == 1 else (lambda t: shard(job.batches(t), r, layout.D))
    specs = chain_specs(stage, layout, rank, batches(0) if s == 0 else None)
    average = None if layout.D == 1 else Averager(group, layout, rank, opts.timeout, staging)
    timer, timeline = StepTimer(stage), []
    dist.barrier()
    t0 = time.perf_counter()
    links = Links(rank, job, specs, opts, device, staging, t0, timeline, layout)
    losses = drive(stage_program(stage, job, batches, average), links, timer, t0, timeline,
                   on_step)
    links.close()
    beat(STARTUP_S)  # the peers may still be finishing: their own deadlines watch them
    wall = time.perf_counter() - t0
    stats = {**links.stats, **(average.stats if average else {}), "stage": s, "replica": r,
             "param_bytes": param_bytes([*stage.blocks, stage.head]),
             "model_param_bytes": model_bytes,
             "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    return {"losses": losses, "timeline": [tuple(e) for e in timeline], "wall": wall,
            "params": own_state(state), "stats": stats}


def worker(rank, world, jobs, opts, gather=False, progress=False):
    """A rank's process: join the group (and the mesh), run every Job, optionally gather all
    ranks' results on rank 0 (torchrun, where rank 0 also shows a progress bar), barrier, leave.
    The rendezvous comes from the environment; an "auto" order is resolved here (every rank
    computes the same bytes from the same Jobs)."""
    beat(STARTUP_S)
    torch.set_num_threads(opts.threads or max(1, (os.cpu_count() or 1) // world))
    opts = replace(opts, order=resolve_order(opts.order, jobs, opts.replicas))
    backend, device, staging = backend_and_device(opts, world)
    dist.init_process_group(backend, timeout=timedelta(seconds=max(opts.timeout, STARTUP_S)),
                            rank=rank, world_size=world,
                            device_id=device if backend == "nccl" else None)
    group = replica_group(Layout(jobs[0].plan.n_stages, opts.replicas, opts.order), backend)
    # a bar only where it is shown: any tqdm makes a lock that a killed worker would leak
    bar = tqdm(total=sum(j.n_steps for j in jobs), desc="stage 0") if progress and rank == 0 \
        else None
    try:
        parts = [run_job(rank, world, job, opts, device, staging, bar and bar.update, group)
                 for job in jobs]
    finally:
        if bar is not None:
            bar.close()
    for part in parts:
        part["stats"]["backend"] = backend
        part["stats"]["order"] = opts.order
        part["stats"]["node"] = int(os.environ.get("GROUP_RANK", 0))  # torchrun's node rank
    if gather:
        everyone = [None] * world if rank == 0 else None
        dist.gather_object(parts, everyone, dst=0)
        parts = everyone
    dist.barrier()  # nobody tears down while a peer still talks to it
    dist.destroy_process_group()
    return parts


def torchrun_worker(jobs, opts, progress=True):
    """This process as one stage under torchrun: dies with its agent, returns rank 0's gathered
    parts (None on the other ranks)."""
    watch_parent("torchrun agent")  # a killed agent must not leave its workers training
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    parts = worker(rank, world, jobs, opts, gather=True, progress=progress)
    return parts if rank == 0 else None


def merge(parts, job, replicas=1, order="replicas-together"):
    """One RunResult from every rank's plain data for the same Job (parts in rank order, ranks
    numbered in ``order``).

    Losses and weights come from replica 0 of each stage, after checking that every replica holds
    the same weights and losses bitwise (they average the same gradients); the timeline keeps
    every rank's events (``Event.replica`` tells a stage's replicas apart); stats keep one dict
    per rank (in rank order), with its "stage", "replica" and "order"."""
    layout = Layout(job.plan.n_stages, replicas, order)
    firsts = [parts[layout.rank(s, 0)] for s in range(layout.K)]
    for rank, p in enumerate(parts):
        first = firsts[layout.where(rank)[0]]
        if p["losses"] != first["losses"] or any(
                not np.array_equal(v, first["params"][k]) for k, v in p["params"].items()):
            raise RuntimeError(f"{layout.name(rank)} ended with other weights or losses than "
                               f"replica 0 of its stage: the replicas diverged")
    losses = [list(row) for row in zip(*(p["losses"] for p in firsts))]
    timeline = as_timeline(e for p in parts for e in p["timeline"])
    params = {k: v for p in firsts for k, v in p["params"].items()}
    history = {"step": list(range(1, job.n_steps + 1)), "train_loss": losses}
    return RunResult(history, timeline, params, [p["stats"] for p in parts],
                     max(p["wall"] for p in parts))


def run_distributed(jobs, backend="auto", window=2, timeout=60.0, threads=None, device="auto",
                    progress=False, replicas=1, order="replicas-together", *, options=None):
    """Run a Job (or a list of Jobs with the same number of stages, one after another in one
    process group) with one process per stage and replica; returns a RunResult (or a list).

    replicas: D data-parallel copies of every stage (K·D processes on a (K, D) device mesh):
    replica r of stage 0 reads shard r of each batch, and a stage's replicas average their
    gradients before every update, so the run equals the full-batch one up to float rounding.
    order: which rank is replica r of stage s: "replicas-together" (s·D + r), "stages-together"
    (r·K + s) or "auto" (by bytes per step, summed over the jobs' runs; see ``layout.py``); it
    matters where ranks span nodes (torchrun), and changes no result here. threads: torch
    threads per process (default: cores // (K·D)). timeout: seconds any message or gradient
    average may take. device "cpu" keeps every stage on the CPU where GPUs exist
    (e.g. to compare bitwise with a CPU run). progress: a bar of the steps every stage has
    finished. Raises WorkerError (the stage that failed first, then what followed) if a worker
    fails, dies or hangs. options: an ``Options`` with all of these settings at once (the object
    ``run_pipeline`` and the CLI take too), instead of the keywords.
    """
    single = isinstance(jobs, Job)
    jobs = [jobs] if single else list(jobs)
    if not jobs or not all(isinstance(j, Job) for j in jobs):
        raise TypeError(f"run_distributed: jobs must be a Job or a non-empty list of Jobs, "
                        f"got {jobs!r}")
    K = jobs[0].plan.n_stages
    if any(j.plan.n_stages != K for j in jobs):
        raise ValueError(f"run_distributed: all jobs must have the same number of stages, got "
                         f"{[j.plan.n_stages for j in jobs]}")
    opts = options_from("run_distributed", options, backend=backend, window=window,
                        timeout=timeout, threads=threads, device=device, replicas=replicas,
                        order=order)
    replicas = opts.replicas
    for job in jobs:
        job.check_portable("run_distributed")
        if replicas > 1:
            check_replicas("run_distributed", replicas, job.batches(0)[0].shape[0])
    opts = replace(opts, order=resolve_order(opts.order, jobs, replicas))  # once, here: not per rank
    layout = Layout(K, replicas, opts.order)
    bar = tqdm(total=sum(j.n_steps for j in jobs), desc="distributed", disable=not progress)

    def show(steps):  # the steps the slowest rank has finished
        if int(min(steps)) > bar.n:
            bar.update(int(min(steps)) - bar.n)
    try:
        parts = launch(worker, (jobs, opts), layout.world, startup_s=STARTUP_S, progress=show,
                       names=layout.names())
    finally:
        bar.close()
    results = [merge([parts[r][i] for r in range(layout.world)], job, replicas, opts.order)
               for i, job in enumerate(jobs)]
    return results[0] if single else results
