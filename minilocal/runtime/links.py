"""One rank's point-to-point messages: ``Links`` posts receives ahead, keeps a window of sends
in flight, waits on every request within the timeout, and records the waits on the timeline.
The workers of ``distributed.py`` drive it; each message's layout comes from ``wire.py``."""
import time
from collections import deque
from datetime import timedelta

import torch
import torch.distributed as dist

from .launch import beat, peer_failure
from .layout import Layout
from .timeline import Event
from .wire import MessageLayout


def stall_s(opts):
    """How long a stage may go without progress: past its own message timeout, so that a peer's
    timeout (which names the stage it waited for) reports first."""
    return opts.timeout + max(2.0, 0.25 * opts.timeout)


class Links:
    """One rank's messages: receives posted ahead, a window of sends in flight, timelines.

    Replica r of stage s talks to replica r of stages s-1 and s+1 (``Layout.neighbour``). Each
    channel's messages, both ways, have a layout fixed by batch 0 (``wire.MessageLayout``): an
    activation and its labels travel as one packed buffer up to ``wire.PACK_BYTES``, as two
    tensors beyond; a backward message as its tensor.

    Where a message's time went before the layouts (gloo, 2 processes x 1 thread on this 2-core
    box, ``benchmarks/messages.py``: 1.7-1.9x a raw isend/irecv stream at 16-64 KiB, 1.3x at
    256 KiB, ~1x at 4 MiB): not in waiting (one blocking ``wait`` with a timeout per request, no
    polling: with and without the timeout measured the same) nor in posting order (receives were
    already posted ``window`` ahead, as in the raw stream), but (1) in two operations per
    activation message, one for the labels: one flat buffer instead cost 0.66x the wall time and
    0.7x the CPU of the two-tensor stream at 16 KiB; and (2) in the Python around each operation:
    dist.isend/irecv's checks, a timedelta and a formatted string per wait, detach/contiguous/to
    per tensor, ~20 us per message and side on a quiet core, 40-60 us of main-thread CPU under
    load. Copies cost in proportion to size (1 MiB: ~120 us; a fresh 4 MiB buffer also
    page-faults: 1.2 ms vs 0.6 ms reused), so only small messages are packed.
    """

    WHAT = {("recv", "act"): "receive the activation of",
            ("recv", "grad"): "receive the backward message of",
            ("send", "act"): "send the act message of",
            ("send", "grad"): "send the grad message of"}

    def __init__(self, rank, job, specs, opts, device, staging, t0, timeline, layout=None):
        layout = layout or Layout(job.plan.n_stages)
        self.rank, self.opts, self.device, self.staging = rank, opts, device, staging
        self.t0, self.timeline, self.layout = t0, timeline, layout
        n = job.n_steps
        s, r = layout.where(rank)
        self.stage, self.replica = s, r  # this rank's row on the timeline
        before, after = layout.neighbour(rank, -1), layout.neighbour(rank, 1)  # None: no stage
        self.peer = {"act": (before, after), "grad": (after, before)}  # (from, to)
        self.expect = {"act": n if s > 0 else 0, "grad": n if job.receivers()[s] else 0}
        inputs, outputs, labels = specs  # (shape, dtype) of this rank's input, output, labels
        # staged: through host memory (gloo); otherwise on this stage's device, labels included
        # (the batch source makes them on the CPU, and NCCL sends only CUDA tensors)
        where, me = torch.device("cpu") if staging else device, layout.name(rank)
        act, grad = ["activation", "labels"], ["backward message"]
        self.inbox = {"act": MessageLayout(f"{me}'s incoming activation", [inputs, labels], act,
                                           where),
                      "grad": MessageLayout(f"{me}'s incoming backward message", [outputs], grad,
                                            where)}
        self.outbox = {"act": MessageLayout(f"{me}'s activation message", [outputs, labels], act,
                                            where),
                       "grad": MessageLayout(f"{me}'s backward message", [inputs], grad, where)}
        self.ahead = {"act": opts.window, "grad": job.delay + 1}
        self.posted = {c: deque() for c in self.peer}
        self.n_posted = {c: 0 for c in self.peer}
        self.sending = deque()
        self.patience, self.stall = timedelta(seconds=opts.timeout), stall_s(opts)
        # the default group's own send/recv (global ranks): dist.isend/irecv add only checks
        # that the layouts have made, and cost microseconds per call
        self.world = dist.group.WORLD
        self.stats = {"sent_act": 0, "sent_grad": 0, "recv_wait_s": 0.0, "send_wait_s": 0.0,
                      "device": str(device), "staging": staging}
        for c in self.peer:
            self._post(c)

    def _post(self, c):
        box, source = self.inbox[c], self.peer[c][0]
        while len(self.posted[c]) < self.ahead[c] and self.n_posted[c] < self.expect[c]:
            bufs = box.empty()
            try:  # posting fails at once when the peer's connection is already gone
                works = [self.world.recv([buf], source, 0) for buf in bufs]
            except RuntimeError as e:
                raise self._failure(e, "recv", c, source, self.n_posted[c]) from e
            self.posted[c].append((works, bufs, self.n_posted[c]))
            self.n_posted[c] += 1

    def _wait(self, works, kind, c, peer, step):
        t_start = time.perf_counter()
        try:
            for work in works:
                work.wait(self.patience)
        except RuntimeError as e:
            raise self._failure(e, kind, c, peer, step) from e
        t_end = time.perf_counter()
        self.stats[kind + "_wait_s"] += t_end - t_start
        self.timeline.append(Event(self.stage, kind, t_start - self.t0, t_end - self.t0, step,
                                   self.replica))

    def _failure(self, e, kind, c, peer, step):
        """The PeerError (or PeerTimeout) for gloo's error ``e`` on a message to or from peer."""
        me, them, what = self.layout.name(self.rank), self.layout.name(peer), self.WHAT[(kind, c)]
        return peer_failure(e, peer, f"{me} timed out after {self.opts.timeout:g} s waiting to "
                                     f"{what} step {step} (peer: {them}); is that stage stuck or "
                                     f"dead? Slow stages need a larger timeout",
                            f"{me} could not {what} step {step} (peer: {them})")

    def recv(self, c, step):
        """The message of ``step`` on channel c: (activation, labels) for "act", else a tensor."""
        works, bufs, posted_step = self.posted[c].popleft()
        if posted_step != step:
            raise RuntimeError(f"{self.layout.name(self.rank)}: {c} messages out of order (step "
                               f"{step} asked for, step {posted_step} next)")
        self._wait(works, "recv", c, self.peer[c][0], step)
        self._post(c)
        value = self.inbox[c].unpack(bufs, self.device if self.staging else None)
        return value if c == "act" else value[0]

    def send(self, c, value, step):
        """Send the message of ``step`` on channel c (checked against its layout); returns once
        at most ``window`` sends are in flight."""
        box = self.outbox[c]
        bufs, token = box.pack(value if c == "act" else (value,), step)
        try:
            works = [self.world.send([buf], self.peer[c][1], 0) for buf in bufs]
        except RuntimeError as e:
            raise self._failure(e, "send", c, self.peer[c][1], step) from e
        self.sending.append((works, bufs, token, step, c))  # the buffers stay alive until done
        self.stats["sent_" + c] += 1
        while len(self.sending) > self.opts.window:
            self._finish_send()

    def _finish_send(self):
        works, _, token, step, c = self.sending.popleft()
        self._wait(works, "send", c, self.peer[c][1], step)
        self.outbox[c].release(token)

    def close(self):
        """Wait for every send still in flight."""
        while self.sending:
            beat(self.stall)  # in the program, ``drive`` beats before every request
            self._finish_send()
