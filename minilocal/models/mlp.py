"""The MLP as ``(blocks, heads)`` for a Plan: the torch twin of ``numpy_core.init_mlp``."""
from __future__ import annotations

import torch
from torch import nn

from ..plan import Plan
from ..validate import check_choice, check_int
from .common import check_plan, seeded

ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh}


class Dense(nn.Linear):
    """activation(linear(x)): x (B, D_in) -> (B, D_out). Param names as nn.Linear's."""

    def __init__(self, d_in: int, d_out: int, activation: str = "relu") -> None:
        super().__init__(d_in, d_out)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ACTIVATIONS[self.activation](super().forward(x))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation}"


def mlp(plan: Plan, d_in: int = 40, width: int = 128, n_classes: int = 10,
        activation: str = "relu", seed: int = 0,
        dtype: torch.dtype = torch.float32) -> tuple[list[nn.Module], list[nn.Module]]:
    """MLP twin of ``numpy_core.init_mlp``: block l is Dense(d_in or width -> width).

    Head s: ``nn.Linear(width, n_classes)`` on block ``plan.stages[s][-1]``'s output. A LocalNet
    built from it has the same ``state_dict`` names and shapes as ``init_mlp``'s params.
    """
    where = "mlp"
    check_plan(where, plan)
    for name, value in (("d_in", d_in), ("width", width), ("n_classes", n_classes)):
        check_int(where, name, value, 1)
    check_choice(where, "activation", activation, ACTIVATIONS)

    def build():
        blocks = [Dense(d_in if l == 0 else width, width, activation) for l in range(plan.n_blocks)]
        return blocks, [nn.Linear(width, n_classes) for _ in plan.stages]
    return seeded(where, seed, dtype, build)
