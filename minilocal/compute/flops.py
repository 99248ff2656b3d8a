"""FLOPs per block and per head, forward and backward, counted by torch (never by hand).

``torch.utils.flop_counter.FlopCounterMode`` counts the matmul/conv-like ops that dominate the
cost (2 FLOPs per multiply-add; elementwise ops such as ReLU or a bias add are not counted).
The backward is split in two because the methods differ exactly there:

* ``backward_w``: gradients of the module's own parameters (every trained block pays it);
* ``backward_x``: the gradient with respect to the module's input, which only exists where a
  loss has to travel further back. A greedy stage detaches its input, so its blocks never pay it.

For a Linear(D_in, D_out) on B examples: forward 2 B D_in D_out, and each backward part the same.
All numbers are per example (counted on a batch, divided by its size).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop, sdpa_flop

from ..local import kept_buffers
from ..plan import Plan

_aten = torch.ops.aten
# FlopCounterMode's table (torch 2.13) has the GPU kernels of scaled_dot_product_attention but not
# the CPU one, which it would count as 0 FLOPs: count it with the same formulas, so attention costs
# the same on every device (causal masking is not discounted, as for the GPU kernels).
CPU_ATTENTION = {op: formula for name, formula in (
    ("_scaled_dot_product_flash_attention_for_cpu", sdpa_flop),
    ("_scaled_dot_product_flash_attention_for_cpu_backward", sdpa_backward_flop))
    if hasattr(_aten, name) for op in [getattr(_aten, name)]}


@dataclass(frozen=True)
class Flops:
    """Per-example FLOPs of one module: forward, weight-gradient and input-gradient backward."""
    forward: float
    backward_w: float
    backward_x: float

    @property
    def backward(self) -> float:
        """Full backward (weights and input), what plain backprop pays in a middle block."""
        return self.backward_w + self.backward_x


def _counted(fn):
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        fn()
    return counter.get_total_flops()


def count_flops(module: torch.nn.Module, x: torch.Tensor) -> tuple[Flops, torch.Tensor]:
    """Per-example Flops of ``module`` on the example batch x: (B, ...); returns (Flops, output)."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"count_flops: module must be an nn.Module, got {type(module).__name__}")
    if not torch.is_tensor(x) or x.dim() == 0 or x.shape[0] < 1:
        raise ValueError(f"count_flops: x must be a batch tensor of shape (B, ...) with B >= 1, "
                         f"got {getattr(x, 'shape', x)!r}")
    batch = x.shape[0]
    x = x.detach().requires_grad_(x.is_floating_point())
    with kept_buffers(module):  # counting must not move BatchNorm statistics
        with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
            out = module(x)
        forward = counter.get_total_flops()
        params = [p for p in module.parameters() if p.requires_grad]
        seed = torch.ones_like(out)

        def grads(inputs):
            # each count needs its own graph; a fresh forward outside the counter provides it
            y = module(x)
            return lambda: torch.autograd.grad(y, inputs, seed, allow_unused=True)

        weights = _counted(grads(params)) if params else 0
        both = _counted(grads(params + [x])) if x.requires_grad else weights
    flops = Flops(forward / batch, weights / batch, (both - weights) / batch)
    return flops, out.detach()


def model_flops(blocks: Iterable[torch.nn.Module], heads: Iterable[torch.nn.Module], plan: Plan,
                x: torch.Tensor) -> tuple[list[Flops], list[Flops]]:
    """Per-example Flops of every block and every head of a model built for ``plan``.

    x: (B, ...) an example input batch (a few rows suffice). Head s reads the output of the last
    block of stage s. Returns (block_flops: list of L Flops, head_flops: list of K Flops).
    """
    blocks, heads = list(blocks), list(heads)
    if len(blocks) != plan.n_blocks or len(heads) != plan.n_stages:
        raise ValueError(f"model_flops: the plan has {plan.n_blocks} blocks and {plan.n_stages} "
                         f"stages, got {len(blocks)} blocks and {len(heads)} heads")
    block_flops, outputs = [], []
    h = x
    for block in blocks:
        f, h = count_flops(block, h)
        block_flops.append(f)
        outputs.append(h)
    head_flops = [count_flops(head, outputs[stage[-1]])[0] for head, stage in zip(heads, plan.stages)]
    return block_flops, head_flops
