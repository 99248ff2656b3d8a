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

Backprop is one stage, so it has no fill and no parallelism across blocks. Example, L equal
Linear blocks with f FLOPs per forward (= weight grad = input grad) and a head costing h in all:
greedy W_s = 2f + h; backprop W = (3L - 1) f + h. The model ignores communication, staleness,
optimizer updates and the elementwise ops FlopCounterMode does not count.
"""
import math

from ..plan import Plan


def describe_cost_model():
    """The cost model in words and formulas, for a notebook to print."""
    return __doc__.split("\n\n", 1)[1].strip()


def stage_flops(plan, block_flops, head_flops):
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


def _check_positive(name, value, where, allow_none=False, integer=True):
    if allow_none and value is None:
        return value
    kind = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        what = "a positive int" if integer else "a positive number"
        raise ValueError(f"{where}: {name} must be {what}{' or None' if allow_none else ''}, "
                         f"got {value!r}")
    return value


def step_flops(stage_work, batch):
    """Total FLOPs of one training step: batch * sum of the per-example stage work."""
    _check_positive("batch", batch, "step_flops")
    return batch * float(sum(stage_work))


def step_time(stage_work, batch, throughput=1e12, devices_per_stage=None):
    """Idealized seconds per step: max_s W_s * ceil(batch / devices_per_stage) / throughput."""
    where = "step_time"
    _check_positive("batch", batch, where)
    _check_positive("throughput", throughput, where, integer=False)
    _check_positive("devices_per_stage", devices_per_stage, where, allow_none=True)
    per_device = 1 if devices_per_stage is None else math.ceil(batch / devices_per_stage)
    return max(stage_work) * per_device / throughput


def idealized_time(steps, stage_work, batch, throughput=1e12, devices_per_stage=None):
    """Idealized seconds for ``steps`` steps: (steps + K - 1) * step_time, and 0 for 0 steps."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"idealized_time: steps must be an int >= 0, got {steps!r}")
    if steps == 0:
        return 0.0
    fill = len(stage_work) - 1
    return (steps + fill) * step_time(stage_work, batch, throughput, devices_per_stage)
