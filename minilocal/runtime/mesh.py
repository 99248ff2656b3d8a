"""K stages × D replicas: what each rank builds, its device mesh, and how replicas agree.

Replica r of stage s exchanges messages only with replica r of stages s-1 and s+1; the D
replicas of a stage form the mesh's "replica" group, over which they average gradients before
every update (``Averager``). D = 1 needs no mesh: the runtime is then one process per stage.

The rank order and the bytes that choose it live in ``layout.py``; the device mesh is built
from the order's explicit rank table (``device_mesh``).

Each rank builds only its own stage (``build_stage``): the model recipe runs once, under its
seed, so the stage's weights equal the sequential build's; the other stages' modules are dropped
before the optimizer is made. Its message shapes come from a dry run of batch 0 along its own
replica's chain of stages (``chain_specs``): each rank runs only its own stage, with the
sequential runner's input checks, and passes the result on.

Why a device mesh: it creates every group of both dims collectively, in the order every rank
must agree on, and names them; only its "replica" groups carry traffic (the point-to-point
messages use global ranks). Why an all-reduce and not DistributedDataParallel:
an overlapping plan adds a second backward into the same parameters per step (the message from
stage s+1, applied after the local backward; with a delay, through a recomputed forward that
DDP never sees). DDP reduces during the first backward and ignores the second, and under
``no_sync`` the second backward reduces only the blocks it reaches (checked on gloo: in both
cases the replicas' gradients differ). Averaging once, after every gradient of the step is in,
is both simpler and exact.
"""
import gc
import time
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from ..guards import check_labels, check_modules
from ..local import LocalNet, Stage, forward_blocks, head_logits, cross_entropy
from .launch import peer_failure
from .layout import (ORDERS, Layout, check_order, check_replicas, choose_order,  # noqa: F401
                     param_bytes, resolve_order, shard, traffic)

BUCKET_BYTES = 4 << 20  # gradients are averaged in flat buckets of at most this many bytes


def build_stage(job, s, device):
    """Stage s alone, with the sequential build's initial weights and its own optimizer.

    Returns (stage, state, full_bytes): state lists (name, tensor) for the stage's entries of
    ``LocalNet.state_dict()`` (parameters and persistent buffers); full_bytes is the whole
    model's parameter bytes."""
    plan = job.plan
    blocks, heads = job.model.build(plan)
    check_modules(blocks, heads, plan)
    full_bytes = param_bytes([*blocks, *heads])
    idx = plan.stages[s]
    prefixes = [(f"blocks.{b}.", blocks[b]) for b in idx] + [(f"heads.{s}.", heads[s])]
    del blocks, heads
    gc.collect()  # the other stages' modules go now, before this rank allocates anything more
    for _, m in prefixes:
        m.to(device)
    modules = [m for _, m in prefixes]
    opt = job.optimizer([p for m in modules for p in m.parameters()])
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"LocalNet: optimizer(params) for stage {s} returned "
                        f"{type(opt).__name__}, expected a torch.optim.Optimizer")
    stage = Stage(s, modules[:-1], modules[-1], opt, plan.reach(s), device)
    stage.keep_graph = job.receivers()[s] > 0  # one-hop messages: only stage s+1 reaches here
    state = [(p + k, t) for p, m in prefixes for k, t in m.state_dict(keep_vars=True).items()]
    return stage, state, full_bytes


def own_state(state):
    """A stage's (name, tensor) list from ``build_stage`` as numpy arrays, by name."""
    return {name: t.detach().cpu().numpy().copy() for name, t in state}


def dry_run(stage, x, y):
    """Stage ``stage`` on (x, y) as a training step would see it, with the sequential runner's
    checks, without gradients or changes; returns its output h."""
    if stage.index == 0:
        LocalNet._check_pair(x, y)
    modules = [*stage.blocks, stage.head]
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()  # no BatchNorm statistics change, no dropout draw
    try:
        with torch.no_grad():
            h = forward_blocks(stage, x.to(stage.device))
            if stage.loss_fn is cross_entropy:
                check_labels(stage, head_logits(stage, h), y.to(stage.device))
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
    return h


def chain_specs(stage, layout, rank, batch):
    """(input, output, labels) as (shape, dtype) for this rank's messages, from batch 0 passed
    along its replica's chain: replica r of stage 0 checks shard r, each stage runs only itself."""
    s, _ = layout.where(rank)
    if s == 0:
        x, y = batch
    else:
        box = [None]
        dist.recv_object_list(box, src=layout.neighbour(rank, -1))
        x, y = box[0]
    h = dry_run(stage, x, y)
    if s < layout.K - 1:
        dist.send_object_list([(h.cpu(), y.cpu())], dst=layout.neighbour(rank, 1))
    spec = lambda t: (tuple(t.shape), t.dtype)  # noqa: E731
    return spec(x), spec(h), spec(y)


def device_mesh(layout, backend):
    """The (K, D) device mesh, dims ("stage", "replica"), from the layout's rank table: every
    rank makes the same groups in the same order, whatever the rank order."""
    return DeviceMesh("cuda" if backend == "nccl" else "cpu", torch.tensor(layout.table()),
                      mesh_dim_names=("stage", "replica"))


def replica_group(layout, backend):
    """This rank's replica group from the device mesh; None when D = 1 (no mesh needed)."""
    return None if layout.D == 1 else device_mesh(layout, backend).get_group("replica")


class Averager:
    """Averages a stage's gradients (and its loss) over the stage's replica group.

    Before each update every replica copies its gradients into flat buckets (at most BUCKET_BYTES,
    one dtype each), all-reduces them (SUM, all buckets in flight at once, every wait bounded by
    ``timeout``), divides by D and copies back. The loss rides in the last bucket, so every
    replica sees the same mean loss: a non-finite loss on any replica stops them all. gloo sums
    in the same order on every rank, so the replicas stay bitwise equal.
    """

    def __init__(self, group, layout, rank, timeout, staging):
        self.group, self.layout, self.rank = group, layout, rank
        self.timeout, self.staging = timeout, staging
        s, _ = layout.where(rank)
        self.others = [q for q in layout.replica_ranks(s) if q != rank]
        self.stats = {"reduce_bytes": 0, "reduce_wait_s": 0.0, "n_reduce": 0}

    def buckets(self, tensors):
        out = []
        for t in tensors:
            if out and out[-1][0].dtype == t.dtype and \
                    sum(u.numel() * u.element_size() for u in out[-1]) + \
                    t.numel() * t.element_size() <= BUCKET_BYTES:
                out[-1].append(t)
            else:
                out.append([t])
        return out

    def __call__(self, stage, step):
        """Average this step's gradients in place; returns the mean loss (a float)."""
        loss = stage._loss.reshape(1).to(torch.float32)
        self.reduce([*(p.grad for p in stage.parameters() if p.grad is not None), loss], step)
        stage._loss = loss[0].to(stage._loss.dtype)
        return float(loss[0])

    def reduce(self, tensors, step):
        """Replace each tensor by its mean over the replica group (all buckets in flight)."""
        buckets = self.buckets(tensors)
        flats = [torch.cat([t.reshape(-1) for t in b]) for b in buckets]
        flats = [f.cpu() for f in flats] if self.staging else flats  # gloo: through host memory
        t0 = time.perf_counter()
        try:  # posting fails at once when a replica's connection is already gone
            works = [dist.all_reduce(f, group=self.group, async_op=True) for f in flats]
        except RuntimeError as e:
            raise self._failure(e, step) from e
        for work in works:
            try:
                work.wait(timedelta(seconds=self.timeout))
            except RuntimeError as e:
                raise self._failure(e, step) from e
        self.stats["reduce_wait_s"] += time.perf_counter() - t0
        for bucket, flat in zip(buckets, flats):
            flat.div_(self.layout.D)
            offset = 0
            for t in bucket:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()
        self.stats["reduce_bytes"] += sum(f.numel() * f.element_size() for f in flats)
        self.stats["n_reduce"] += 1

    def _failure(self, e, step):
        """The PeerError (or PeerTimeout) for gloo's error ``e`` while averaging ``step``."""
        who = self.layout.name(self.rank)
        peers = ", ".join(self.layout.name(q) for q in self.others)
        peer = self.others[0] if len(self.others) == 1 else tuple(self.others)
        return peer_failure(e, peer, f"{who} timed out after {self.timeout:g} s waiting to average "
                                     f"the gradients of step {step} with {peers}; is one of them "
                                     f"stuck or dead? Slow replicas need a larger timeout",
                            f"{who} could not average the gradients of step {step} with {peers}")
