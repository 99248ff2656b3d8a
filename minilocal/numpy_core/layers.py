"""Layers as forward/backward pairs, from scratch in NumPy (cs231n style).

Every ``*_fwd`` returns ``(out, cache)``; the matching ``*_bwd`` takes ``(dout, cache)`` and
returns the gradient for the input plus a dict of parameter gradients. Shapes use B batch,
D features, C classes. Weights are stored as torch does: ``weight`` is (D_out, D_in).
"""
import numpy as np


def linear_fwd(x, params):
    """x: (B, D_in), params weight (D_out, D_in), bias (D_out,) -> (B, D_out)."""
    out = x @ params["weight"].T + params["bias"]
    return out, (x, params)  # params by reference: the cache holds no copy of the weights


def linear_bwd(dout, cache):
    """dout: (B, D_out) -> dx (B, D_in), {'weight': (D_out, D_in), 'bias': (D_out,)}."""
    x, params = cache
    return dout @ params["weight"], {"weight": dout.T @ x, "bias": dout.sum(axis=0)}


def relu_fwd(x, params=None):
    """Elementwise max(x, 0)."""
    out = np.maximum(x, 0)
    return out, out > 0


def relu_bwd(dout, cache):
    return dout * cache, {}


def tanh_fwd(x, params=None):
    """Elementwise tanh."""
    out = np.tanh(x)
    return out, out


def tanh_bwd(dout, cache):
    return dout * (1 - cache ** 2), {}


ACTIVATIONS = {"relu": (relu_fwd, relu_bwd), "tanh": (tanh_fwd, tanh_bwd)}


def softmax_cross_entropy_fwd(logits, y):
    """logits: (B, C), y: (B,) int -> (mean loss, cache). Stable: shifts by the row max."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(len(y)), y].mean()
    return loss, (log_probs, y)


def softmax_cross_entropy_bwd(dloss, cache):
    """-> dlogits (B, C) = (softmax - onehot) / B, times the upstream scalar."""
    log_probs, y = cache
    dlogits = np.exp(log_probs)
    dlogits[np.arange(len(y)), y] -= 1
    return dloss * dlogits / len(y)


def dense_fwd(x, params, activation="relu"):
    """One MLP block: activation(linear(x)). x: (B, D_in) -> (B, D_out)."""
    act_fwd, _ = ACTIVATIONS[activation]
    z, lin_cache = linear_fwd(x, params)
    out, act_cache = act_fwd(z)
    return out, (lin_cache, act_cache, activation)


def dense_bwd(dout, cache):
    lin_cache, act_cache, activation = cache
    _, act_bwd = ACTIVATIONS[activation]
    dz, _ = act_bwd(dout, act_cache)
    return linear_bwd(dz, lin_cache)
