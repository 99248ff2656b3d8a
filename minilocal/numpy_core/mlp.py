"""An MLP of L blocks with one linear head per stage, and its local gradients for any Plan.

Parameters live in one flat dict whose names and shapes equal a torch MLP's ``state_dict()``:
``blocks.{l}.weight`` (H, D_in or H), ``blocks.{l}.bias`` (H,), ``heads.{s}.weight`` (C, H),
``heads.{s}.bias`` (C,). Head s reads the output of stage s's last block.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from ..plan import Plan
from .layers import DenseCache, LinearCache, Params
from .layers import dense_bwd, dense_fwd, linear_bwd, linear_fwd
from .layers import softmax_cross_entropy_bwd, softmax_cross_entropy_fwd


def sub(params: Params, prefix: str) -> Params:
    """The entries of ``params`` under ``prefix`` (e.g. 'blocks.2'), with the prefix removed."""
    return {k[len(prefix) + 1:]: v for k, v in params.items() if k.startswith(prefix + ".")}


def init_mlp(plan: Plan, d_in: int = 40, width: int = 64, n_classes: int = 10, seed: int = 0,
             dtype: DTypeLike = np.float64) -> Params:
    """Weights drawn like torch's nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    if not isinstance(plan, Plan):
        raise TypeError(f"init_mlp: plan must be a minilocal.Plan, got {type(plan).__name__}")
    rng = np.random.default_rng(seed)

    def linear(prefix, fan_in, fan_out):
        bound = 1 / np.sqrt(fan_in)
        return {f"{prefix}.weight": rng.uniform(-bound, bound, (fan_out, fan_in)).astype(dtype),
                f"{prefix}.bias": rng.uniform(-bound, bound, fan_out).astype(dtype)}

    params = {}
    for l in range(plan.n_blocks):
        params.update(linear(f"blocks.{l}", d_in if l == 0 else width, width))
    for s in range(plan.n_stages):
        params.update(linear(f"heads.{s}", width, n_classes))
    return params


def forward(params: Params, x: np.ndarray, plan: Plan, activation: str = "relu",
            ) -> tuple[list[np.ndarray], list[DenseCache], list[tuple[np.ndarray, LinearCache]]]:
    """Run every block once. x: (B, D_in) -> (acts, caches, logits per stage), acts[l] = input of block l."""
    acts, caches = [x], []
    for l in range(plan.n_blocks):
        h, cache = dense_fwd(acts[-1], sub(params, f"blocks.{l}"), activation)
        acts.append(h)
        caches.append(cache)
    head_caches = [linear_fwd(acts[stage[-1] + 1], sub(params, f"heads.{s}"))
                   for s, stage in enumerate(plan.stages)]
    return acts, caches, head_caches


def stage_losses(params: Params, x: np.ndarray, y: np.ndarray, plan: Plan,
                 activation: str = "relu") -> list[np.floating]:
    """Per-stage mean cross-entropy losses l_s (a list of K floats), with no gradients."""
    _, _, heads = forward(params, x, plan, activation)
    return [softmax_cross_entropy_fwd(logits, y)[0] for logits, _ in heads]


def predict(params: Params, x: np.ndarray, plan: Plan, activation: str = "relu",
            stage: int = -1) -> np.ndarray:
    """Class predictions (B,) from one head; the default is the output head."""
    _, _, heads = forward(params, x, plan, activation)
    return heads[stage][0].argmax(axis=1)


def cache_bytes(cache: object) -> int:
    """Bytes of the arrays held in a (nested) cache: the activations kept for backward
    (parameter dicts inside caches are references to the weights, not activations, so skipped)."""
    if isinstance(cache, np.ndarray):
        return cache.nbytes
    if isinstance(cache, (tuple, list)):
        return sum(cache_bytes(c) for c in cache)
    return 0


def local_grads(params: Params, x: np.ndarray, y: np.ndarray, plan: Plan, activation: str = "relu",
                stats: dict[str, Any] | None = None) -> tuple[Params, list[np.floating]]:
    """Gradients exactly as the Plan says, and the per-stage losses.

    grad(block l) = sum over stages s with l in plan.trained_by(s) of dl_s/dtheta_l, where the
    derivative runs back through every block of trained_by(s) and stops at the input of its first
    block (the stop-gradient). A head gets only its own loss.

    Stages run in order, forward then backward, and a block's cache is freed as soon as no later
    window needs it: greedy keeps one block's activations alive, backprop keeps all of them. Pass
    a dict as ``stats`` to get ``stats["peak_cache_bytes"]``.
    """
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    caches, losses, h, peak = {}, [], x, 0
    for s, stage in enumerate(plan.stages):
        for l in stage:
            h, caches[l] = dense_fwd(h, sub(params, f"blocks.{l}"), activation)
        logits, head_cache = linear_fwd(h, sub(params, f"heads.{s}"))
        loss, ce_cache = softmax_cross_entropy_fwd(logits, y)
        losses.append(loss)
        peak = max(peak, sum(cache_bytes(c) for c in caches.values())
                   + cache_bytes(head_cache) + cache_bytes(ce_cache))
        dh, g = linear_bwd(softmax_cross_entropy_bwd(1.0, ce_cache), head_cache)
        for name, value in g.items():
            grads[f"heads.{s}.{name}"] += value
        for l in reversed(plan.trained_by(s)):
            dh, g = dense_bwd(dh, caches[l])
            for name, value in g.items():
                grads[f"blocks.{l}.{name}"] += value
        still_needed = plan.trained_by(s + 1)[0] if s + 1 < plan.n_stages else plan.n_blocks
        for l in [l for l in caches if l < still_needed]:
            del caches[l]
    if stats is not None:
        stats["peak_cache_bytes"] = peak
    return grads, losses
