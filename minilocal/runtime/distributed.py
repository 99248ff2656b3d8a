"""The distributed runner: one process per stage, messages over torch.distributed.

Every rank rebuilds the Job's model from its recipe (same seed, so the same initial weights),
keeps its own stage and runs the shared stage program (``program.py``), answering its requests
with point-to-point messages:

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
stopped too. Stage 0, the one that reads the data, runs batch 0 through the whole net with the
sequential runner's input checks before any message is sent (``shared_specs``).

Devices and backends (``backend="auto"``): gloo on CPU; NCCL with one GPU per process when the
node has at least as many GPUs as processes; with fewer GPUs, gloo with host staging (a stage
computes on its GPU, tensors go through CPU memory for each message: NCCL refuses two ranks on
one GPU). Timelines use each process's clock from a common start barrier.

Launch: ``run_distributed(job)`` from Python or a notebook (``launch.py`` spawns the workers), or
``torchrun --nproc-per-node=K -m minilocal train ...`` (see ``python -m minilocal train --help``).
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
import re
import time
from collections import deque
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .job import Job, RunResult, stage_state
from .launch import PeerError, PeerTimeout, beat, launch, watch_parent
from .program import Compute, Send, StepTimer, stage_program
from .timeline import Event


STARTUP_S = 120  # process-group timeout: a loaded machine may take long to start every worker


def stall_s(opts):
    """How long a stage may go without progress: past its own message timeout, so that a peer's
    timeout (which names the stage it waited for) reports first."""
    return opts.timeout + max(2.0, 0.25 * opts.timeout)


@dataclass(frozen=True)
class Options:
    """How the workers run (not what they compute): backend, send window, timeout, threads,
    and ``device``: "auto" (GPUs when present) or "cpu" (gloo on CPU even beside GPUs)."""
    backend: str = "auto"
    window: int = 2
    timeout: float = 60.0
    threads: int = None
    device: str = "auto"

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


def gloo_words(error):
    """gloo's message without its source location and its boilerplate advice."""
    text = re.sub(r"\[[^\]]*\.(cc|cpp|h):\d+\] ", "", str(error))
    return text.split(" This is typically caused")[0]


def placement(opts, world):
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


class Links:
    """One stage's messages: receives posted ahead, a window of sends in flight, timelines."""

    def __init__(self, rank, job, specs, opts, device, staging, t0, timeline):
        self.rank, self.opts, self.device, self.staging = rank, opts, device, staging
        self.t0, self.timeline = t0, timeline
        n = job.n_steps
        self.peer = {"act": (rank - 1, rank + 1), "grad": (rank + 1, rank - 1)}  # (from, to)
        self.expect = {"act": n if rank > 0 else 0, "grad": n if job.receivers()[rank] else 0}
        outputs, labels = specs  # (shape, dtype) of every stage's output, and of the labels
        self.parts = {"act": [outputs[rank - 1], labels] if rank > 0 else [],
                      "grad": [outputs[rank]]}  # the tensors one message is made of
        self.ahead = {"act": opts.window, "grad": job.delay + 1}
        self.posted = {c: deque() for c in self.peer}
        self.n_posted = {c: 0 for c in self.peer}
        self.sending = deque()
        self.stats = {"sent_act": 0, "sent_grad": 0, "recv_wait_s": 0.0, "send_wait_s": 0.0,
                      "device": str(device), "staging": staging}
        for c in self.peer:
            self._post(c)

    def _post(self, c):
        where = "cpu" if self.staging else self.device
        while len(self.posted[c]) < self.ahead[c] and self.n_posted[c] < self.expect[c]:
            bufs = [torch.empty(shape, dtype=dtype, device=where) for shape, dtype in self.parts[c]]
            works = [dist.irecv(buf, self.peer[c][0]) for buf in bufs]
            self.posted[c].append((works, bufs, self.n_posted[c]))
            self.n_posted[c] += 1

    def _wait(self, works, what, peer, kind, step):
        beat(stall_s(self.opts))
        t_start = time.perf_counter()
        try:
            for work in works:
                work.wait(timedelta(seconds=self.opts.timeout))
        except RuntimeError as e:
            if "timed out" in str(e).lower():
                raise PeerTimeout(f"stage {self.rank} timed out after {self.opts.timeout:g} s "
                                  f"waiting to {what} step {step} (peer: stage {peer}); is that "
                                  f"stage stuck or dead? Slow stages need a larger timeout",
                                  peer) from e
            raise PeerError(f"stage {self.rank} could not {what} step {step} (peer: stage "
                            f"{peer}): {gloo_words(e)}", peer) from e
        t_end = time.perf_counter()
        self.stats[f"{kind}_wait_s"] += t_end - t_start
        self.timeline.append(Event(self.rank, kind, t_start - self.t0, t_end - self.t0, step))

    def recv(self, c, step):
        """The message of ``step`` on channel c: (activation, labels) for "act", else a tensor."""
        works, bufs, posted_step = self.posted[c].popleft()
        assert posted_step == step, f"stage {self.rank}: {c} messages out of order"
        what = "receive the activation of" if c == "act" else "receive the backward message of"
        self._wait(works, what, self.peer[c][0], "recv", step)
        self._post(c)
        bufs = [b.to(self.device) for b in bufs] if self.staging else bufs
        return tuple(bufs) if c == "act" else bufs[0]

    def send(self, c, value, step):
        tensors = [t.detach().contiguous() for t in (value if c == "act" else [value])]
        # staged: through host memory (gloo); otherwise on this stage's device, labels included
        # (the batch source makes them on the CPU, and NCCL sends only CUDA tensors)
        tensors = [t.cpu() if self.staging else t.to(self.device) for t in tensors]
        works = [dist.isend(t, self.peer[c][1]) for t in tensors]
        self.sending.append((works, tensors, step, c))
        self.stats[f"sent_{c}"] += 1
        while len(self.sending) > self.opts.window:
            self._finish_send()

    def _finish_send(self):
        works, _, step, c = self.sending.popleft()  # the tensors stay alive until here
        self._wait(works, f"send the {c} message of", self.peer[c][1], "send", step)

    def close(self):
        while self.sending:
            self._finish_send()


def message_specs(net, x, y):
    """(shape, dtype) of every stage's output for batch (x, y), and of the labels y, from a
    checked dry run (``LocalNet.check_batch``: the sequential runner's input checks)."""
    return net.check_batch(x, y), (tuple(y.shape), y.dtype)


def drive(program, links, timer, rank, t0, timeline, on_step=None):
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
            timeline.extend(Event(rank, k, a - t0, b - t0, request.step) for k, a, b in spans)
            if request.kind == "update":
                beat(limit, steps=1)
                if on_step is not None:
                    on_step()
        elif isinstance(request, Send):
            links.send(request.channel, request.value, request.step)
            value = None
        else:
            value = links.recv(request.channel, request.step)


def shared_specs(rank, net, job):
    """Stage 0, the one that reads the data, checks batch 0 before any message is sent and
    tells every stage the message shapes; a bad batch fails there, with the sequential error."""
    box = [message_specs(net, *job.batches(0))] if rank == 0 else [None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run_job(rank, world, job, opts, device, staging, on_step=None):
    """One Job on this rank, inside an initialized process group; returns plain data."""
    if job.plan.n_stages != world:
        raise ValueError(f"the plan has {job.plan.n_stages} stages but {world} processes were "
                         f"started; start one process per stage "
                         f"(torchrun --nproc-per-node={job.plan.n_stages})")
    beat(STARTUP_S)  # building the net and meeting the others: startup time
    net = job.build([device if s == rank else "cpu" for s in range(world)])
    stage = net.stages[rank]
    specs = shared_specs(rank, net, job)
    timer, timeline = StepTimer(stage), []
    dist.barrier()
    t0 = time.perf_counter()
    links = Links(rank, job, specs, opts, device, staging, t0, timeline)
    losses = drive(stage_program(stage, job), links, timer, rank, t0, timeline, on_step)
    links.close()
    beat(STARTUP_S)  # the peers may still be finishing: their own deadlines watch them
    wall = time.perf_counter() - t0
    return {"losses": losses, "timeline": [tuple(e) for e in timeline], "wall": wall,
            "params": stage_state(net, rank), "stats": links.stats}


def worker(rank, world, jobs, opts, gather=False, progress=False):
    """A stage's process: join the group, run every Job, optionally gather all ranks' results on
    rank 0 (torchrun, where rank 0 also shows a progress bar), barrier, leave. The rendezvous
    comes from the environment."""
    beat(STARTUP_S)
    torch.set_num_threads(opts.threads or max(1, (os.cpu_count() or 1) // world))
    backend, device, staging = placement(opts, world)
    dist.init_process_group(backend, timeout=timedelta(seconds=max(opts.timeout, STARTUP_S)),
                            rank=rank, world_size=world,
                            device_id=device if backend == "nccl" else None)
    # a bar only where it is shown: any tqdm makes a lock that a killed worker would leak
    bar = tqdm(total=sum(j.n_steps for j in jobs), desc="stage 0") if progress and rank == 0 \
        else None
    try:
        parts = [run_job(rank, world, job, opts, device, staging, bar and bar.update)
                 for job in jobs]
    finally:
        if bar is not None:
            bar.close()
    for part in parts:
        part["stats"]["backend"] = backend
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


def merge(parts, job):
    """One RunResult from every rank's plain data for the same Job (parts in rank order)."""
    losses = [list(row) for row in zip(*(p["losses"] for p in parts))]
    timeline = sorted((Event(*e) for p in parts for e in p["timeline"]),
                      key=lambda e: (e.t_start, e.stage))
    params = {k: v for p in parts for k, v in p["params"].items()}
    history = {"step": list(range(1, job.n_steps + 1)), "train_loss": losses}
    return RunResult(history, timeline, params, [p["stats"] for p in parts],
                     max(p["wall"] for p in parts))


def run_distributed(jobs, backend="auto", window=2, timeout=60.0, threads=None, device="auto",
                    progress=False):
    """Run a Job (or a list of Jobs with the same number of stages, one after another in one
    process group) with one process per stage; returns a RunResult (or a list).

    threads: torch threads per process (default: cores // K). timeout: seconds any message may
    take. device "cpu" keeps every stage on the CPU where GPUs exist (e.g. to compare bitwise
    with a CPU run). progress: a bar of the steps every stage has finished. Raises WorkerError
    (the stage that failed first, then what followed) if a worker fails, dies or hangs.
    """
    single = isinstance(jobs, Job)
    jobs = [jobs] if single else list(jobs)
    if not jobs or not all(isinstance(j, Job) for j in jobs):
        raise TypeError(f"run_distributed: jobs must be a Job or a non-empty list of Jobs, "
                        f"got {jobs!r}")
    world = jobs[0].plan.n_stages
    if any(j.plan.n_stages != world for j in jobs):
        raise ValueError(f"run_distributed: all jobs must have the same number of stages, got "
                         f"{[j.plan.n_stages for j in jobs]}")
    opts = Options(backend, window, timeout, threads, device)
    for job in jobs:
        job.check_portable("run_distributed")
    bar = tqdm(total=sum(j.n_steps for j in jobs), desc="distributed", disable=not progress)

    def show(steps):  # the steps the slowest stage has finished
        if int(min(steps)) > bar.n:
            bar.update(int(min(steps)) - bar.n)
    try:
        parts = launch(worker, (jobs, opts), world, startup_s=STARTUP_S, progress=show)
    finally:
        bar.close()
    results = [merge([parts[r][i] for r in range(world)], job) for i, job in enumerate(jobs)]
    return results[0] if single else results

