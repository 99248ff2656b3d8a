"""One stage at a time: the NumPy twin of ``minilocal.local.stage_step`` and ``receive_grad``.

``local_grads`` computes a whole Plan's gradients in one pass. The same gradients come from
running each stage on its own, as a runtime does: ``stage_step`` sees only its stage's input
(the previous stage's output, detached: NumPy has no graph to cut) and returns the forward
message ``out``, its loss, its gradients and, when a later loss reaches into earlier blocks
(``plan.reach(s) > 0``), the backward message ``grad_in`` = d loss_s / d x_in. The earlier stage
applies that message with ``receive_grad`` through the caches it kept. ``run_stages`` drives the
stages in order; its gradients are bitwise equal to ``local_grads`` (tests check it).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..plan import Plan
from .layers import DenseCache, Params
from .layers import dense_bwd, dense_fwd, linear_bwd, linear_fwd
from .layers import softmax_cross_entropy_bwd, softmax_cross_entropy_fwd
from .mlp import sub


@dataclass
class StageStep:
    """What one stage step produces: the forward message ``out``, the stage's ``loss``, the
    gradients of its own blocks and head (``grads``, by parameter name), the backward message
    ``grad_in`` (None when no later loss reaches back) and its blocks' ``caches`` (for
    ``receive_grad``)."""
    out: np.ndarray
    loss: np.floating  # a NumPy scalar of the logits' dtype, not a Python float
    grads: Params
    grad_in: np.ndarray | None = None
    caches: list[DenseCache] | None = None


def _add(grads, prefix, g):
    for name, value in g.items():
        key = f"{prefix}.{name}"
        grads[key] = grads[key] + value if key in grads else value


def stage_step(params: Params, plan: Plan, s: int, x_in: np.ndarray, y: np.ndarray,
               activation: str = "relu") -> StageStep:
    """Stage ``s`` of ``plan`` on its input ``x_in`` with labels ``y``: forward through its blocks
    and head, its mean cross-entropy loss, and backward through its own blocks (the stop-gradient
    sits at ``x_in``). Returns a StageStep."""
    if not isinstance(plan, Plan):
        raise TypeError(f"stage_step: plan must be a minilocal.Plan, got {type(plan).__name__}")
    if not 0 <= s < plan.n_stages:
        raise ValueError(f"stage_step: the plan has stages 0..{plan.n_stages - 1}, got s={s!r}")
    h, caches = x_in, []
    for l in plan.stages[s]:
        h, cache = dense_fwd(h, sub(params, f"blocks.{l}"), activation)
        caches.append(cache)
    logits, head_cache = linear_fwd(h, sub(params, f"heads.{s}"))
    loss, ce_cache = softmax_cross_entropy_fwd(logits, y)
    grads = {}
    dh, g = linear_bwd(softmax_cross_entropy_bwd(1.0, ce_cache), head_cache)
    _add(grads, f"heads.{s}", g)
    for l, cache in zip(reversed(plan.stages[s]), reversed(caches)):
        dh, g = dense_bwd(dh, cache)
        _add(grads, f"blocks.{l}", g)
    return StageStep(h, loss, grads, dh if plan.reach(s) else None, caches)


def receive_grad(plan: Plan, s: int, caches: Sequence[DenseCache], grad_out: np.ndarray,
                 n_blocks: int) -> tuple[Params, np.ndarray | None]:
    """A later stage's message ``grad_out`` (d loss / d out of stage ``s``) backpropagated through
    the last ``n_blocks`` blocks of stage ``s`` (their ``caches`` from ``stage_step``). Returns
    (grads of those blocks, d loss / d x_in of stage s when the message must travel further
    back, i.e. n_blocks > the stage's blocks, else None)."""
    idx = plan.stages[s]
    if not 1 <= n_blocks:
        raise ValueError(f"receive_grad: n_blocks must be >= 1, got {n_blocks!r}")
    grads, dh = {}, grad_out
    last = list(zip(idx, caches))[-n_blocks:]
    for l, cache in reversed(last):
        dh, g = dense_bwd(dh, cache)
        _add(grads, f"blocks.{l}", g)
    return grads, (dh if n_blocks > len(idx) else None)


def run_stages(params: Params, x: np.ndarray, y: np.ndarray, plan: Plan,
               activation: str = "relu") -> tuple[Params, list[np.floating]]:
    """Every stage in order, each on the previous one's detached output, with the backward
    messages delivered hop by hop: (grads, losses) as ``local_grads`` returns them."""
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    steps, losses, h = [], [], x
    for s in range(plan.n_stages):
        step = stage_step(params, plan, s, h, y, activation)
        for key, value in step.grads.items():
            grads[key] += value
        message, left, t = step.grad_in, plan.reach(s), s - 1
        while left > 0:  # the message continues stage by stage until reach(s) blocks got it
            got, message = receive_grad(plan, t, steps[t].caches, message, left)
            for key, value in got.items():
                grads[key] += value
            left, t = left - len(plan.stages[t]), t - 1
        steps.append(step)
        losses.append(step.loss)
        h = step.out
    return grads, losses
