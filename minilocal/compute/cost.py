"""The idealized cost model: FLOPs per training step and idealized parallel time, per method.

Work is counted per example, per stage, from the per-block and per-head Flops (``flops.py``),
exactly as LocalNet executes a Plan (a test checks it against FlopCounterMode run on a whole
``LocalNet.local_backward``). Each stage runs on its own device and does, per example:

* forward of its blocks and its head, and the head's full backward (weights and input);
* for every loss u that trains one of its blocks b (``plan.losses_for(b)``): b's weight gradient,
  plus b's input gradient unless b is the first block loss u trains (``plan.trained_by(u)[0]``),
  where the loss stops. So greedy stages never pay an input gradient (their input is detached);
  overlapping's extra backward through the previous block lands on the previous block's device,
  and the stage itself pays its first block's input gradient to send that message back.

With W_s the per-example work of stage s, K stages, batch B, R FLOP/s per device and D devices
per stage (ideal data parallelism: each device takes ceil(B / D) examples; D = None means one
device per example, so the step time does not grow with B):

    step FLOPs  = B * sum_s W_s                                  (the cost: all stages and heads)
    step time   = max_s W_s * ceil(B / D) / R                    (the slowest stage sets the pace)
    time(n)     = (n + K - 1) * step time  for n >= 1, time(0) = 0   (pipeline fill, paid once)

That is the "unlimited devices" view (D = None: K * B devices for a local method, B for
backprop). At **equal hardware**, a budget of N devices in all (``equal_hardware_time``):

    backprop            data parallel over min(B, N) devices
    local methods       K stages x min(B, N // K) replicas each; pipeline fill once per run
    pipelined backprop  (GPipe/1F1B) the backprop model cut into K stages x N // K replicas; each
                        replica's b = ceil(B / D) examples in M microbatches, with its bubble every
                        step: step time = (M + K - 1) * max_s V_s * ceil(b / M) / R, where V_s is
                        the backprop work of stage s's blocks (``pipeline_stage_flops``)

Backprop is one stage, so it has no fill and no parallelism across blocks. Example, L equal
Linear blocks with f FLOPs per forward (= weight grad = input grad) and a head costing h in all:
greedy W_s = 2f + h; backprop W = (3L - 1) f + h. The model ignores staleness, optimizer updates
and the elementwise ops FlopCounterMode does not count.

Communication is left out unless a ``Traffic`` is given: each link costs alpha + bytes / beta per
message (``Link(latency=alpha, bandwidth=beta)``). Per step, a stage then adds the time of the
messages it sends (its output for b = ceil(B / D) examples plus their labels to stage s+1, and for
an overlapping plan d loss_s / d x_in back to stage s-1) and an all-reduce of its parameters over
its D replicas (``allreduce_time``: 2 ceil(log2 D) alpha + 2 (D - 1) / D P_s / beta); pipelined backprop sends one forward
and one backward message per microbatch and all-reduces once per step. Communication is not
overlapped with computation here (an upper bound on the step time): step time = max_s (compute_s
+ comm_s).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..plan import Plan
from ..validate import check_int, check_positive

if TYPE_CHECKING:  # flops.py imports torch; the cost model does not need it
    from .flops import Flops


def describe_cost_model() -> str:
    """The cost model in words and formulas, for a notebook to print."""
    return __doc__.split("\n\n", 1)[1].strip()


@dataclass(frozen=True)
class Link:
    """A link between two devices: ``latency`` seconds per message (alpha) plus bytes /
    ``bandwidth`` (beta, bytes per second)."""
    latency: float = 0.0
    bandwidth: float = math.inf

    def __post_init__(self) -> None:
        if isinstance(self.latency, bool) or not isinstance(self.latency, (int, float)) \
                or not self.latency >= 0:
            raise ValueError(f"Link: latency must be seconds >= 0, got {self.latency!r}")
        check_positive("Link", "bandwidth (bytes per second)", self.bandwidth)

    def time(self, nbytes: float, messages: int = 1) -> float:
        """Seconds for ``messages`` messages carrying ``nbytes`` bytes in all."""
        return messages * self.latency + nbytes / self.bandwidth


def allreduce_time(nbytes: float, replicas: int, link: Link) -> float:
    """Seconds of an all-reduce of ``nbytes`` over ``replicas`` devices as reduce-scatter plus
    all-gather by recursive halving and doubling (Rabenseifner): 2 ceil(log2 D) messages in a
    row, each device moving 2 (D - 1) / D of the bytes (no cost for D = 1)."""
    D = check_int("allreduce_time", "replicas", replicas, 1)
    if D == 1:
        return 0.0
    return link.time(2 * (D - 1) / D * nbytes, messages=2 * math.ceil(math.log2(D)))


@dataclass(frozen=True)
class Traffic:
    """What a method puts on the wire, for ``equal_hardware_time`` and ``pipeline_time``.

    forward_bytes[s]: bytes per example stage s sends to stage s+1 (its output and the label;
    0 for the last stage); backward_bytes[s]: bytes per example it sends back to stage s-1 (the
    overlap message; 0 where none); param_bytes[s]: bytes of stage s's parameters, averaged
    over its replicas every step; link: the cost of one message."""
    forward_bytes: tuple
    backward_bytes: tuple
    param_bytes: tuple
    link: Link

    def __post_init__(self) -> None:
        if not isinstance(self.link, Link):
            raise TypeError(f"Traffic: link must be a Link, got {type(self.link).__name__}")
        if not len(self.forward_bytes) == len(self.backward_bytes) == len(self.param_bytes):
            raise ValueError(f"Traffic: one entry per stage in forward_bytes, backward_bytes and "
                             f"param_bytes, got {len(self.forward_bytes)}, "
                             f"{len(self.backward_bytes)} and {len(self.param_bytes)}")

    @classmethod
    def of(cls, plan: Plan, boundary_bytes: Sequence[float], param_bytes: Sequence[float],
           link: Link, label_bytes: float = 8) -> Traffic:
        """The traffic of ``plan``: boundary_bytes[s] is the size per example of stage s's output
        (K - 1 values, one per boundary), param_bytes[s] the size of stage s's parameters; labels
        travel with every forward message (int64: 8 bytes)."""
        K = plan.n_stages
        if len(boundary_bytes) != K - 1 or len(param_bytes) != K:
            raise ValueError(f"Traffic.of: the plan has {K} stages: give {K - 1} boundary_bytes "
                             f"and {K} param_bytes, got {len(boundary_bytes)} and {len(param_bytes)}")
        forward = [boundary_bytes[s] + label_bytes for s in range(K - 1)] + [0]
        backward = [0] + [boundary_bytes[s - 1] if plan.reach(s) else 0 for s in range(1, K)]
        return cls(tuple(forward), tuple(backward), tuple(param_bytes), link)

    @classmethod
    def pipeline(cls, boundary_bytes: Sequence[float], param_bytes: Sequence[float],
                 link: Link) -> Traffic:
        """The traffic of backprop cut into K pipeline stages: per microbatch example, the
        activation forward and its gradient back across every boundary (the labels stay with
        the last stage's data)."""
        K = len(param_bytes)
        if len(boundary_bytes) != K - 1:
            raise ValueError(f"Traffic.pipeline: {K} stages need {K - 1} boundary_bytes, got "
                             f"{len(boundary_bytes)}")
        return cls(tuple(boundary_bytes) + (0,), (0,) + tuple(boundary_bytes), tuple(param_bytes),
                   link)

    def stage_seconds(self, examples: int, replicas: int) -> list[float]:
        """Per stage, seconds of communication per step with ``examples`` examples per replica."""
        return [self.link.time(examples * f, messages=int(f > 0))
                + self.link.time(examples * b, messages=int(b > 0))
                + allreduce_time(p, replicas, self.link)
                for f, b, p in zip(self.forward_bytes, self.backward_bytes, self.param_bytes)]


def stage_flops(plan: Plan, block_flops: Sequence[Flops],
                head_flops: Sequence[Flops]) -> list[float]:
    """Per-example FLOPs W_s each stage's device does in one training step: a list of K floats."""
    if not isinstance(plan, Plan):
        raise TypeError(f"stage_flops: plan must be a minilocal.Plan, got {type(plan).__name__}")
    if len(block_flops) != plan.n_blocks or len(head_flops) != plan.n_stages:
        raise ValueError(f"stage_flops: the plan has {plan.n_blocks} blocks and {plan.n_stages} "
                         f"stages, got Flops for {len(block_flops)} blocks and {len(head_flops)} heads")
    work = [h.forward + h.backward_w + h.backward_x for h in head_flops]
    for b, f in enumerate(block_flops):
        s = plan.stage_of(b)
        work[s] += f.forward
        for u in plan.losses_for(b):
            work[s] += f.backward_w + (f.backward_x if b > plan.trained_by(u)[0] else 0.0)
    return work


def step_flops(stage_work: Sequence[float], batch: int) -> float:
    """Total FLOPs of one training step: batch * sum of the per-example stage work."""
    check_int("step_flops", "batch", batch, 1)
    return batch * float(sum(stage_work))


def step_time(stage_work: Sequence[float], batch: int, throughput: float = 1e12,
              devices_per_stage: int | None = None) -> float:
    """Idealized seconds per step: max_s W_s * ceil(batch / devices_per_stage) / throughput."""
    where = "step_time"
    check_int(where, "batch", batch, 1)
    check_positive(where, "throughput", throughput)
    check_int(where, "devices_per_stage", devices_per_stage, 1, none_ok=True)
    per_device = 1 if devices_per_stage is None else math.ceil(batch / devices_per_stage)
    return max(stage_work) * per_device / throughput


def idealized_time(steps: int, stage_work: Sequence[float], batch: int,
                   throughput: float = 1e12, devices_per_stage: int | None = None) -> float:
    """Idealized seconds for ``steps`` steps: (steps + K - 1) * step_time, and 0 for 0 steps."""
    check_int("idealized_time", "steps", steps, 0)
    if steps == 0:
        return 0.0
    fill = len(stage_work) - 1
    return (steps + fill) * step_time(stage_work, batch, throughput, devices_per_stage)


def _check_devices(n_devices, n_stages, where):
    check_int(where, "n_devices", n_devices, 1)
    if n_devices < n_stages:
        raise ValueError(f"{where}: {n_stages} stages need at least {n_stages} devices, got "
                         f"n_devices={n_devices}; give every stage a device of its own")
    return n_devices // n_stages


def equal_hardware_time(steps: int, stage_work: Sequence[float], batch: int, n_devices: int,
                        throughput: float = 1e12, traffic: Traffic | None = None) -> float:
    """Idealized seconds for ``steps`` steps on N devices in all: K stages x min(B, N // K)
    data-parallel replicas each (K = 1: data-parallel backprop), pipeline fill paid once.
    traffic: a ``Traffic`` adds each stage's messages and gradient all-reduce to its step."""
    replicas = min(batch, _check_devices(n_devices, len(stage_work), "equal_hardware_time"))
    if traffic is None:
        return idealized_time(steps, stage_work, batch, throughput, replicas)
    _check_traffic(traffic, len(stage_work), "equal_hardware_time")
    check_int("equal_hardware_time", "steps", steps, 0)
    check_positive("equal_hardware_time", "throughput", throughput)
    per = math.ceil(batch / replicas)
    comm = traffic.stage_seconds(per, replicas)
    step = max(w * per / throughput + c for w, c in zip(stage_work, comm))
    return 0.0 if steps == 0 else (steps + len(stage_work) - 1) * step


def _check_traffic(traffic, n_stages, where):
    if not isinstance(traffic, Traffic):
        raise TypeError(f"{where}: traffic must be a Traffic or None, got {type(traffic).__name__}")
    if len(traffic.param_bytes) != n_stages:
        raise ValueError(f"{where}: traffic describes {len(traffic.param_bytes)} stages but the "
                         f"work has {n_stages}")


def pipeline_stage_flops(plan: Plan, block_flops: Sequence[Flops],
                         head_flops: Flops) -> list[float]:
    """Per-example work V_s of each pipeline stage when ONE backprop model is cut by ``plan``'s
    stages: forward, weight and input gradient of its blocks (no input gradient for block 0),
    and the output head on the last stage. ``head_flops``: the output head's Flops."""
    if not isinstance(plan, Plan):
        raise TypeError(f"pipeline_stage_flops: plan must be a minilocal.Plan, got {type(plan).__name__}")
    if len(block_flops) != plan.n_blocks:
        raise ValueError(f"pipeline_stage_flops: the plan has {plan.n_blocks} blocks, got Flops for "
                         f"{len(block_flops)}")
    work = [0.0] * plan.n_stages
    for b, f in enumerate(block_flops):
        work[plan.stage_of(b)] += f.forward + f.backward_w + (f.backward_x if b > 0 else 0.0)
    work[-1] += head_flops.forward + head_flops.backward_w + head_flops.backward_x
    return work


def pipeline_time(steps: int, pipeline_work: Sequence[float], batch: int, n_devices: int,
                  microbatches: int | None = None, throughput: float = 1e12,
                  traffic: Traffic | None = None) -> float:
    """Idealized seconds of ``steps`` GPipe/1F1B steps of backprop on N devices: K pipeline stages
    x N // K replicas, every step paying the bubble: (M + K - 1) * max V_s * ceil(b / M) / R with
    b = ceil(B / D) examples per replica and M microbatches (default b: one example each).
    traffic: a ``Traffic`` of the pipeline's stages (its backward messages are every stage's
    d loss / d input) adds per microbatch messages and the all-reduce once per step."""
    where = "pipeline_time"
    check_int(where, "steps", steps, 0)
    check_int(where, "batch", batch, 1)
    check_positive(where, "throughput", throughput)
    K = len(pipeline_work)
    per_replica = math.ceil(batch / min(batch, _check_devices(n_devices, K, where)))
    M = per_replica if microbatches is None else check_int(where, "microbatches", microbatches, 1)
    if M > per_replica:
        raise ValueError(f"{where}: {M} microbatches but only {per_replica} examples per replica; "
                         f"use at most {per_replica}")
    m = math.ceil(per_replica / M)
    if traffic is None:
        return steps * (M + K - 1) * max(pipeline_work) * m / throughput
    _check_traffic(traffic, K, where)
    D = min(batch, n_devices // K)
    sends = traffic.stage_seconds(m, 1)  # one microbatch's messages, no all-reduce
    tick = max(v * m / throughput + c for v, c in zip(pipeline_work, sends))
    reduce = max(allreduce_time(p, D, traffic.link) for p in traffic.param_bytes)
    return steps * ((M + K - 1) * tick + reduce)


PIPELINED = "backprop, GPipe"  # the name of backprop's runs timed as a pipeline (GPipe or 1F1B)


def fastest_at_equal_hardware(runs: Iterable[dict[str, Any]], n_devices: int,
                              throughput: float = 1e12,
                              pipeline_work: Sequence[float] | None = None,
                              traffic: dict[str, Traffic] | None = None,
                              ) -> dict[str, tuple[float, dict[str, Any]]]:
    """The fastest idealized time to a target per method on N devices in all.

    runs: dicts with "method", "steps" (steps to the target), "stage_flops" and "batch". Local
    methods and data-parallel backprop are timed by ``equal_hardware_time``; with
    ``pipeline_work`` (the V_s of ``pipeline_stage_flops``), backprop's runs are also timed as
    GPipe/1F1B on the same N (``pipeline_time``, with the best number of microbatches among
    powers of two and one example each), under the name ``PIPELINED``. Runs with more
    stages than N devices are left out. traffic: {method: Traffic} (PIPELINED for the pipeline)
    adds communication where given. Returns {method: (time, run)} for the methods with a run."""
    traffic = traffic or {}
    best = {}

    def offer(name, t, run):
        if name not in best or t < best[name][0]:
            best[name] = (t, run)
    for run in runs:
        if n_devices < len(run["stage_flops"]):
            continue
        offer(run["method"], equal_hardware_time(run["steps"], run["stage_flops"], run["batch"],
                                                 n_devices, throughput,
                                                 traffic.get(run["method"])), run)
        if (pipeline_work is not None and run["method"] == "backprop"
                and n_devices >= len(pipeline_work)):
            per_replica = math.ceil(run["batch"] / min(run["batch"], n_devices // len(pipeline_work)))
            for m in _microbatch_counts(per_replica):  # each message costs alpha: fewer may win
                offer(PIPELINED, pipeline_time(run["steps"], pipeline_work, run["batch"], n_devices,
                                               m, throughput, traffic.get(PIPELINED)), run)
    return best


def _microbatch_counts(examples):
    """1, 2, 4, ... up to ``examples``, and ``examples`` itself (one example per microbatch)."""
    counts = [1 << i for i in range(examples.bit_length()) if 1 << i <= examples]
    return counts + ([examples] if counts[-1] != examples else [])

