"""The stage program: what one stage does per step, written once for every runner but sequential.

``stage_program`` is a generator. It computes through ``stage_step`` / ``receive_grad`` /
``Stage.update`` and *asks* its driver for communication by yielding requests:

    Compute(kind, fn, step)  run fn now (kind: "step" = forward + local backward, "backward" =
                             apply a backward message, "reduce" = average gradients over the
                             stage's replicas, "update" = optimizer step); returns fn()
    Send(channel, value, step)    "act": (activation, labels) to stage s+1; "grad": a tensor to s-1
    Recv(channel, step)      blocking, in order; returns the value ("act" from s-1, "grad" from s+1)

Only stage 0 reads the batch source; labels travel with the activations, as from a data loader.
With data-parallel replicas, stage 0 reads its replica's shard (``batches``) and every stage
averages its gradients with its replicas (``average``) just before each update.

``run_in_order`` answers at once, stages in turn, one step at a time (the sequential runner); the
simulator answers in simulated time, the distributed worker with torch.distributed. Because all
three run this one program, their numerics can differ only through the order the Job fixes.
"""
import time
from collections import deque
from dataclasses import dataclass
from functools import partial

import torch

from ..local import receive_grad, receive_stale_grad, stage_step


@dataclass
class Compute:
    kind: str
    fn: object
    step: int


@dataclass
class Send:
    channel: str
    value: object
    step: int


@dataclass
class Recv:
    channel: str
    step: int


def stage_program(stage, job, batches=None, average=None):
    """Run ``job.n_steps`` steps of one stage; returns its local losses (floats), one per step.

    batches: t -> (x, y) for stage 0 (default ``job.batches``). average: (stage, t) -> mean loss
    over the replicas, run after every gradient of step t is in (None: no replicas)."""
    batches = batches or job.batches
    s, K = stage.index, job.plan.n_stages
    reach_next = job.plan.receivers()[s]
    losses, inputs = [], {}  # inputs: this stage's input of the steps whose message is pending
    for t in range(job.n_steps):
        x, y = batches(t) if s == 0 else (yield Recv("act", t))
        if reach_next and job.delay:
            inputs[t] = x
        res = yield Compute("step", partial(stage_step, stage, x, y, update=False), t)
        if s < K - 1:
            yield Send("act", (res.x_out, y), t)
        if res.grad_in is not None:
            yield Send("grad", res.grad_in, t)
        if reach_next and t >= job.delay:
            grad = yield Recv("grad", t - job.delay)
            if job.delay:  # the graph of step t - delay is gone: recompute it at current weights
                apply = partial(receive_stale_grad, stage, grad, reach_next, inputs.pop(t - job.delay))
            else:
                apply = partial(receive_grad, stage, grad, reach_next)
            yield Compute("backward", apply, t)
        mean = None if average is None else (yield Compute("reduce", partial(average, stage, t), t))
        yield Compute("update", stage.update, t)
        losses.append(float(res.loss) if mean is None else mean)
    if reach_next:  # every message is received (no send left pending); the last `delay` go unused
        for t in range(max(0, job.n_steps - job.delay), job.n_steps):
            yield Recv("grad", t)
    return losses


def run_in_order(programs: list, n_steps: int, compute) -> list:
    """Drive stage programs synchronously: in each step t, stages take turns in order 0..K-1,
    each running until it waits for a message not sent yet; no stage starts step t + 1 before
    every stage is done with step t. ``compute(s, request)`` runs a Compute request. Returns the
    programs' return values (per stage, its list of losses)."""
    K = len(programs)
    mail = {(channel, s): deque() for channel in ("act", "grad") for s in range(K)}
    pending, results = [None] * K, [None] * K  # the request each program waits on; its return

    def advance(s, value):
        try:
            pending[s] = programs[s].send(value)
        except StopIteration as done:
            pending[s], results[s] = None, done.value

    for s in range(K):
        advance(s, None)
    for t in range(n_steps + 1):  # the last round drains what follows the last step
        moved = True
        while moved:
            moved = False
            for s in range(K):
                while pending[s] is not None and (pending[s].step <= t or t == n_steps):
                    request, value = pending[s], None
                    if isinstance(request, Recv):
                        box = mail[(request.channel, s)]
                        if not box:
                            break  # wait for the stage that sends it
                        value = box.popleft()
                    elif isinstance(request, Send):
                        to = s + 1 if request.channel == "act" else s - 1
                        mail[(request.channel, to)].append(request.value)
                    else:
                        value = compute(s, request)
                    moved = True
                    advance(s, value)
    stuck = [s for s in range(K) if pending[s] is not None]
    if stuck:
        raise RuntimeError(f"run_in_order: stages {stuck} wait for messages nobody sends "
                           f"({[pending[s] for s in stuck]}); the programs do not match")
    return results


class StepTimer:
    """Times ``stage_step`` in two parts: forward (up to the head's output) and backward.

    A forward hook on the head stamps the split; on a GPU both ends synchronize so the times
    measure the kernels, not their launch.
    """

    def __init__(self, stage):
        self.stage, self.split = stage, None
        stage.head.register_forward_hook(self._stamp)

    def _stamp(self, *_):
        self.split = self.now()

    def now(self):
        if self.stage.device.type == "cuda":
            torch.cuda.synchronize(self.stage.device)
        return time.perf_counter()

    def run(self, kind, fn):
        """Run fn; returns (result, [(kind, t_start, t_end), ...]) in perf_counter seconds."""
        self.split = None
        t0 = self.now()
        out = fn()
        t1 = self.now()
        if kind == "step" and self.split is not None:
            return out, [("forward", t0, self.split), ("backward", self.split, t1)]
        return out, [(kind, t0, t1)]
