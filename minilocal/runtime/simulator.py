"""A deterministic discrete-event simulator of K stages running asynchronously.

Each stage runs the shared stage program (``program.py``) for real, so the weights it ends with
are the weights that schedule would produce, but time is simulated: every compute request takes
its cost from a table (given, or measured once with ``measure_costs``), messages arrive
``latency`` seconds after they are sent, and the activation queue between two stages holds at
most ``capacity`` messages (a full queue blocks the sender). Jitter multiplies each cost by a
seeded log-normal factor. Events are processed in simulated-time order, ties in the order
they were scheduled, so a run is a pure function of its arguments.

Staleness: when stage s starts step t it trains on the activation of batch t, made by stage s-1
in its step t; ``stats[s]["staleness"][t]`` counts the updates stage s-1 has finished *after* its
update t by then (0: the activation is as fresh as a synchronous pipeline's). For forward-only plans this changes nothing numerically (the message is the same as in
the sequential run); with overlap, ``Job.delay`` decides which backward message an update uses.
"""
from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from collections.abc import Iterable, Sequence
from statistics import median
from typing import Literal

import numpy as np

from ..validate import check_int
from .job import Job, RunResult, stage_state
from .program import Compute, Send, stage_program
from .sequential import run_sequential
from .timeline import Event, order

COST_KINDS = ("forward", "backward", "update", "message")
# (timeline kind, cost kind) drawn for each compute request of the stage program
_PARTS = {"step": [("forward", "forward"), ("backward", "backward")],
          "backward": [("backward", "message")], "update": [("update", "update")]}


def cost_table(costs: dict[str, Sequence[float]] | Iterable[float],
               n_stages: int) -> dict[str, list[float]]:
    """Per-kind lists of K seconds from a dict of lists or K per-step costs (split 1/3 : 2/3)."""
    if isinstance(costs, dict):
        unknown = set(costs) - set(COST_KINDS)
        if unknown:
            raise ValueError(f"simulate: unknown cost kinds {sorted(unknown)}; use {COST_KINDS}")
        table = {k: list(costs.get(k, [0.0] * n_stages)) for k in COST_KINDS}
    else:
        costs = list(costs)
        if len(costs) != n_stages or not all(isinstance(c, (int, float)) and c >= 0
                                             and math.isfinite(c) for c in costs):
            raise ValueError(f"simulate: costs must be {n_stages} finite seconds >= 0 per step "
                             f"(one per stage), got {costs}")
        table = {"forward": [c / 3 for c in costs], "backward": [2 * c / 3 for c in costs],
                 "update": [0.0] * len(costs), "message": [0.0] * len(costs)}
    for kind, values in table.items():
        if len(values) != n_stages or not all(isinstance(v, (int, float)) and v >= 0
                                              and math.isfinite(v) for v in values):
            raise ValueError(f"simulate: costs[{kind!r}] must be {n_stages} finite seconds >= 0 "
                             f"(one per stage), got {values}")
    return table


def measure_costs(job: Job, n_steps: int = 6, skip: int = 1) -> dict[str, list[float]]:
    """Median seconds per stage of forward, backward, update and message, timed sequentially.

    Timed synchronously (delay 0): for a delayed job the backward message is costed as a pass
    through the kept graph, not as the forward recompute a delayed message needs."""
    timeline = run_sequential(job.replace(n_steps=n_steps + skip, delay=0)).timeline
    samples = {(k, s): [] for k in COST_KINDS for s in range(job.plan.n_stages)}
    seen = set()
    for e in timeline:
        if e.step < skip:
            continue
        kind = e.kind
        if kind == "backward":  # a stage's second backward in a step applies a message
            kind = "message" if (e.stage, e.step) in seen else "backward"
            seen.add((e.stage, e.step))
        samples[kind, e.stage].append(e.t_end - e.t_start)
    return {k: [median(samples[k, s]) if samples[k, s] else 0.0 for s in range(job.plan.n_stages)]
            for k in COST_KINDS}


class _Simulation:
    def __init__(self, job, table, capacity, latency, jitter, seed):
        self.net = job.build()
        self.K, self.table = job.plan.n_stages, table
        self.capacity, self.latency, self.jitter = capacity, latency, jitter
        self.rng = np.random.default_rng(seed)
        self.programs = [stage_program(stage, job) for stage in self.net.stages]
        self.request = [None] * self.K
        self.losses = [None] * self.K
        self.now = [0.0] * self.K                  # when each stage became free
        self.waiting = [None] * self.K             # what a blocked stage waits for
        self.boxes = {(c, s): deque() for c in ("act", "grad") for s in range(self.K)}
        self.timeline, self.heap, self.seq = [], [], 0
        self.step_starts = [[] for _ in range(self.K)]
        self.update_ends = [[] for _ in range(self.K)]
        for s in range(self.K):
            self._advance(s, None)
            self._wake(s, 0.0)

    def _wake(self, s, T):
        self.waiting[s] = None
        heapq.heappush(self.heap, (T, self.seq, s))
        self.seq += 1

    def _advance(self, s, value):
        try:
            self.request[s] = self.programs[s].send(value)
        except StopIteration as done:
            self.request[s], self.losses[s] = None, done.value

    def _begin(self, s, T):
        if T > self.now[s]:
            self.timeline.append(Event(s, "idle", self.now[s], T, self.request[s].step))
            self.now[s] = T

    def _cost(self, kind, s):
        sigma = self.jitter[s]
        factor = math.exp(sigma * self.rng.standard_normal()) if sigma else 1.0
        return self.table[kind][s] * factor

    def _compute(self, s, T, r):
        self._begin(s, T)
        out = r.fn()
        for kind, cost_kind in _PARTS[r.kind]:
            end = self.now[s] + self._cost(cost_kind, s)
            self.timeline.append(Event(s, kind, self.now[s], end, r.step))
            self.now[s] = end
        if r.kind == "step":
            self.step_starts[s].append(T)
        elif r.kind == "update":
            self.update_ends[s].append(self.now[s])
        self._advance(s, out)
        self._wake(s, self.now[s])

    def _handle(self, s, T):
        """Serve stage s's requests at time T until it computes, blocks or ends."""
        while self.request[s] is not None:
            r = self.request[s]
            if isinstance(r, Compute):
                return self._compute(s, T, r)
            if isinstance(r, Send):
                dst = s + 1 if r.channel == "act" else s - 1
                box = self.boxes[r.channel, dst]
                if r.channel == "act" and len(box) >= self.capacity:
                    self.waiting[s] = "send"
                    return
                self._begin(s, T)
                box.append((T + self.latency, r.value))
                if self.waiting[dst] == r.channel:
                    self._wake(dst, T + self.latency)
            else:
                box = self.boxes[r.channel, s]
                if not box:
                    self.waiting[s] = r.channel
                    return
                if box[0][0] > T:
                    return self._wake(s, box[0][0])
                self._begin(s, T)
                src = s - 1 if r.channel == "act" else s + 1
                value = box.popleft()[1]
                if self.waiting[src] == "send":
                    self._wake(src, T)
                self._advance(s, value)
                continue
            self._advance(s, None)

    def run(self) -> None:
        while self.heap:
            T, _, s = heapq.heappop(self.heap)
            self._handle(s, T)
        stuck = [f"stage {s} waits to {'send' if w == 'send' else 'receive ' + w}"
                 for s, w in enumerate(self.waiting) if w is not None]
        if stuck:
            raise RuntimeError(f"simulate: the schedule deadlocked: {'; '.join(stuck)}")

    def staleness(self, s: int) -> list[int]:
        if s == 0:
            return [0] * len(self.step_starts[s])
        ends = self.update_ends[s - 1]
        # stage s may start before stage s-1 finishes update t (it sends first): still fresh, 0
        return [max(0, bisect.bisect_right(ends, T) - (t + 1)) for t, T in enumerate(self.step_starts[s])]


def simulate(job: Job,
             costs: dict[str, Sequence[float]] | Iterable[float] | Literal["measure"],
             capacity: int = 2,
             latency: float = 0.0, jitter: float | Sequence[float] = 0.0,
             seed: int = 0) -> RunResult:
    """Run ``job`` under a simulated asynchronous schedule; returns a RunResult.

    costs: K seconds per stage step, or a dict of per-stage lists for "forward", "backward",
    "update" and "message" (``measure_costs(job)`` measures one), or "measure". capacity: the
    activation queue length between stages (>= 1). latency: seconds a message travels. jitter:
    sigma of the log-normal cost noise, one for all stages or one per stage (a jittery stage).
    ``wall`` and the timeline are in simulated seconds.
    """
    if isinstance(costs, str):
        if costs != "measure":
            raise ValueError(f"simulate: costs must be numbers, a dict or 'measure', got {costs!r}")
        costs = measure_costs(job)
    table = cost_table(costs, job.plan.n_stages)
    check_int("simulate", "capacity", capacity, 1, fix="capacity is the messages a queue holds")
    K = job.plan.n_stages
    jitter = [jitter] * K if isinstance(jitter, (int, float)) else list(jitter)
    for name, values in (("latency", [latency]), ("jitter", jitter)):
        if not all(isinstance(v, (int, float)) and 0 <= v < math.inf for v in values):
            raise ValueError(f"simulate: {name} must be finite numbers >= 0, got {values!r}")
    if len(jitter) != K:
        raise ValueError(f"simulate: jitter must be one sigma or one per stage ({K}), got {jitter}")
    sim = _Simulation(job, table, capacity, latency, jitter, seed)
    sim.run()
    timeline = sorted(sim.timeline, key=order)
    params = {k: v for s in range(sim.K) for k, v in stage_state(sim.net, s).items()}
    history = {"step": list(range(1, job.n_steps + 1)),
               "train_loss": [list(row) for row in zip(*sim.losses)]}
    stats = [{"staleness": sim.staleness(s)} for s in range(sim.K)]
    return RunResult(history, timeline, params, stats, max(sim.now))
