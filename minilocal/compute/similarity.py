"""Gradient similarity: how close each block's local-method gradient is to the true backprop one.

For a Plan, block b's gradient is the sum over the losses that train it (``plan.losses_for(b)``)
of d l_u / d theta_b, each loss reaching b through the chain; backprop's is d l_out / d theta_b
with l_out the output head's loss, from the same weights on the same batch. Both come from
``torch.autograd.grad`` and never touch ``.grad``, so measuring does not disturb training.

What must hold (the tests' oracles): a one-chunk Plan is backprop, so every block's cosine is 1;
a block trained only by the output loss (greedy's last block; every block of chunked's last
chunk) gets exactly backprop's gradient, since detaching a block's input does not change the
gradient of the block's own weights; overlapping's block b gets greedy's gradient for b plus
l_{b+1}'s gradient for b.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..local import LocalNet, cross_entropy, kept_buffers
from ..plan import Plan
from ..validate import check_int


def plan_gradients(blocks: Sequence[nn.Module], heads: Sequence[nn.Module], plan: Plan,
                   x: torch.Tensor, y: torch.Tensor,
                   loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy,
                   ) -> list[torch.Tensor]:
    """Each block's gradient under ``plan``, flattened: a list of L tensors (P_b,). x: (B, ...).
    Measuring leaves BatchNorm running statistics as they were."""
    with kept_buffers(*blocks, *heads):
        return _plan_gradients(blocks, heads, plan, x, y, loss_fn)


def _plan_gradients(blocks, heads, plan, x, y, loss_fn):
    if not isinstance(plan, Plan):
        raise TypeError(f"plan_gradients: plan must be a minilocal.Plan, got {type(plan).__name__}")
    if len(blocks) != plan.n_blocks or len(heads) != plan.n_stages:
        raise ValueError(f"plan_gradients: the plan has {plan.n_blocks} blocks and {plan.n_stages} "
                         f"stages, got {len(blocks)} blocks and {len(heads)} heads")
    params = [list(b.parameters()) for b in blocks]
    like = next(p for ps in params for p in ps)
    total = [like.new_zeros(sum(p.numel() for p in ps)) for ps in params]
    acts, h = [], x
    with torch.no_grad():  # the inputs where losses start; each loss rebuilds its own graph
        for block in blocks:
            h = block(h)
            acts.append(h)
    for s, stage in enumerate(plan.stages):
        first = plan.trained_by(s)[0]
        h = acts[first - 1] if first else x
        for b in range(first, stage[-1] + 1):
            h = blocks[b](h)
        loss = loss_fn(heads[s](h), y)
        trained = [p for b in plan.trained_by(s) for p in params[b]]
        grads = iter(torch.autograd.grad(loss, trained))
        for b in plan.trained_by(s):
            if params[b]:
                total[b] += torch.cat([next(grads).reshape(-1) for _ in params[b]])
    return total


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two flat tensors (0 when either is the zero vector)."""
    return float(F.cosine_similarity(a.reshape(1, -1), b.reshape(1, -1), eps=1e-30))


def gradient_similarity(blocks: Sequence[nn.Module], heads: Sequence[nn.Module], plan: Plan,
                        x: torch.Tensor, y: torch.Tensor,
                        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy,
                        ) -> list[float]:
    """Per block, cos(plan's gradient, backprop's gradient through the output head ``heads[-1]``)."""
    local = plan_gradients(blocks, heads, plan, x, y, loss_fn)
    true = plan_gradients(blocks, [heads[-1]], Plan.backprop(plan.n_blocks), x, y, loss_fn)
    return [cosine(a, b) for a, b in zip(local, true)]


def similarity_over_training(net: LocalNet, x: torch.Tensor, y: torch.Tensor,
                             probe: tuple[torch.Tensor, torch.Tensor], steps: int, every: int,
                             batch: int, seed: int = 0) -> dict[str, list[Any]]:
    """Train ``net`` (a LocalNet) for ``steps`` steps on (x, y); every ``every`` steps, and at 0,
    measure gradient_similarity on the fixed ``probe`` = (x_p, y_p). Returns {'step', 'cosine'}
    with cosine[i] the list of L per-block values at step[i]."""
    from .sweep import sample_batches

    for name, value in (("steps", steps), ("every", every), ("batch", batch)):
        check_int("similarity_over_training", name, value, 1)
    heads = [stage.head for stage in net.stages]
    history = {"step": [], "cosine": []}
    batches = sample_batches(len(x), batch, seed)
    for step in range(steps + 1):
        if step % every == 0:
            history["step"].append(step)
            history["cosine"].append(gradient_similarity(list(net.blocks), heads, net.plan,
                                                         *probe, net.stages[-1].loss_fn))
        if step < steps:
            idx = next(batches).to(x.device)
            net.train_step(x[idx], y[idx])
    return history


def __getattr__(name):  # the plot lives in minilocal.viz.similarity; the old name still works
    if name == "plot_similarity":
        from ..viz.similarity import plot_similarity

        return plot_similarity
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
