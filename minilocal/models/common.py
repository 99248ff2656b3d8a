"""What every model builder shares: the Plan check and seeded, dtype-cast construction.

Every builder returns ``blocks`` (L chained ``nn.Module``s) and ``heads`` (one per stage); head s
reads the output of block ``plan.stages[s][-1]``, so a head's input size depends on the Plan.
Weights are drawn under ``seed`` without disturbing torch's global random state.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..plan import Plan
from ..validate import check_int

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_plan(where: str, plan: Plan, n_blocks: int | None = None) -> Plan:
    """``plan`` if it is a Plan (with ``n_blocks`` blocks, when given); else a clear error."""
    if not isinstance(plan, Plan):
        raise TypeError(f"{where}: plan must be a minilocal.Plan, got {type(plan).__name__}; "
                        f"build one with e.g. Plan.greedy(4)")
    if n_blocks is not None and n_blocks != plan.n_blocks:
        raise ValueError(f"{where}: n_blocks={n_blocks!r} but the plan has {plan.n_blocks} blocks; "
                         f"omit n_blocks or build the plan with {n_blocks} blocks")
    return plan


def seeded(where: str, seed: int, dtype: torch.dtype,
           build: Callable[[], tuple[Iterable[nn.Module], Iterable[nn.Module]]],
           ) -> tuple[list[nn.Module], list[nn.Module]]:
    """Run ``build() -> (blocks, heads)`` under torch seed ``seed``, then cast both to ``dtype``."""
    check_int(where, "seed", seed, 0)
    if dtype not in DTYPES:
        raise ValueError(f"{where}: dtype must be a floating torch dtype such as torch.float32 or "
                         f"torch.float64, got {dtype!r}")
    with torch.random.fork_rng(devices=[]):  # the caller's random stream stays untouched
        torch.manual_seed(seed)
        blocks, heads = build()
    return [b.to(dtype) for b in blocks], [h.to(dtype) for h in heads]
