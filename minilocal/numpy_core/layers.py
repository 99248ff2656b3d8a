"""Layers as forward/backward pairs, from scratch in NumPy (cs231n style).

Every ``*_fwd`` returns ``(out, cache)``; the matching ``*_bwd`` takes ``(dout, cache)`` and
returns the gradient for the input plus a dict of parameter gradients. Shapes use B batch,
D features, C classes. Weights are stored as torch does: ``weight`` is (D_out, D_in).
"""
from __future__ import annotations

import numpy as np

Params = dict[str, np.ndarray]                  # parameter name -> array
LinearCache = tuple[np.ndarray, Params]         # (x, params) of linear_fwd
DenseCache = tuple[LinearCache, np.ndarray, str]  # (linear cache, activation cache, name)


def linear_fwd(x: np.ndarray, params: Params) -> tuple[np.ndarray, LinearCache]:
    """x: (B, D_in), params weight (D_out, D_in), bias (D_out,) -> (B, D_out)."""
    out = x @ params["weight"].T + params["bias"]
    return out, (x, params)  # params by reference: the cache holds no copy of the weights


def linear_bwd(dout: np.ndarray, cache: LinearCache) -> tuple[np.ndarray, Params]:
    """dout: (B, D_out) -> dx (B, D_in), {'weight': (D_out, D_in), 'bias': (D_out,)}."""
    x, params = cache
    return dout @ params["weight"], {"weight": dout.T @ x, "bias": dout.sum(axis=0)}


def relu_fwd(x: np.ndarray, params: Params | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Elementwise max(x, 0)."""
    out = np.maximum(x, 0)
    return out, out > 0


def relu_bwd(dout: np.ndarray, cache: np.ndarray) -> tuple[np.ndarray, Params]:
    return dout * cache, {}


def tanh_fwd(x: np.ndarray, params: Params | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Elementwise tanh."""
    out = np.tanh(x)
    return out, out


def tanh_bwd(dout: np.ndarray, cache: np.ndarray) -> tuple[np.ndarray, Params]:
    return dout * (1 - cache ** 2), {}


ACTIVATIONS = {"relu": (relu_fwd, relu_bwd), "tanh": (tanh_fwd, tanh_bwd)}


def softmax_cross_entropy_fwd(logits: np.ndarray, y: np.ndarray,
                              ) -> tuple[np.floating, tuple[np.ndarray, np.ndarray]]:
    """logits: (B, C), y: (B,) int -> (mean loss, cache). Stable: shifts by the row max."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(len(y)), y].mean()
    return loss, (log_probs, y)


def softmax_cross_entropy_bwd(dloss: float, cache: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """-> dlogits (B, C) = (softmax - onehot) / B, times the upstream scalar."""
    log_probs, y = cache
    dlogits = np.exp(log_probs)
    dlogits[np.arange(len(y)), y] -= 1
    return dloss * dlogits / len(y)


def dense_fwd(x: np.ndarray, params: Params,
              activation: str = "relu") -> tuple[np.ndarray, DenseCache]:
    """One MLP block: activation(linear(x)). x: (B, D_in) -> (B, D_out)."""
    act_fwd, _ = ACTIVATIONS[activation]
    z, lin_cache = linear_fwd(x, params)
    out, act_cache = act_fwd(z)
    return out, (lin_cache, act_cache, activation)


def dense_bwd(dout: np.ndarray, cache: DenseCache) -> tuple[np.ndarray, Params]:
    lin_cache, act_cache, activation = cache
    _, act_bwd = ACTIVATIONS[activation]
    dz, _ = act_bwd(dout, act_cache)
    return linear_bwd(dz, lin_cache)
