"""Central-difference gradient checking: the oracle for every hand-written backward pass."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike

from ..plan import Plan
from .layers import Params


FLOOR = 1e-8  # below this |a| + |b| counts as zero: round-off on a zero gradient is not an error


def rel_error(a: ArrayLike, b: ArrayLike) -> float:
    """max |a - b| / max(|a| + |b|, 1e-8) over same-shaped arrays (cs231n's measure; NaN if any
    entry is NaN, 0 for empty arrays): about 1e-7 or less means two gradients agree."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error: the arrays have shapes {a.shape} and {b.shape}; compare "
                         f"arrays of one shape (broadcasting would hide a mistake)")
    if not a.size:
        return 0.0
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), FLOOR)))


def numerical_grad(f: Callable[[], float | np.floating], x: np.ndarray,
                   eps: float = 1e-6) -> np.ndarray:
    """d f / d x by central differences; f() -> float reads ``x`` (an array changed in place)."""
    grad = np.zeros_like(x, dtype=np.float64)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        up = f()
        x[i] = old - eps
        down = f()
        x[i] = old
        grad[i] = (up - down) / (2 * eps)
    return grad


def plan_numerical_grads(params: Params, x: np.ndarray, y: np.ndarray, plan: Plan,
                         losses_fn: Callable[[Params, np.ndarray, np.ndarray, Plan],
                                             Sequence[float | np.floating]],
                         eps: float = 1e-6) -> Params:
    """The Plan's gradients by finite differences: for each parameter of block l, the sum over the
    stages s that train l of d l_s / d theta; for head s, d l_s / d theta. ``losses_fn(params, x, y,
    plan)`` returns the per-stage losses computed with no stop-gradient at all, so every derivative
    is the full one, and only the Plan decides which of them are summed."""
    grads = {}
    for name, value in params.items():
        kind, index = name.split(".")[:2]
        stages = plan.losses_for(int(index)) if kind == "blocks" else (int(index),)
        grads[name] = sum(numerical_grad(lambda: losses_fn(params, x, y, plan)[s], value, eps)
                          for s in stages)
    return grads
