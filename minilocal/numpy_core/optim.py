"""SGD with momentum and Adam over a flat dict of NumPy parameters, updated in place.

The update rules are torch.optim's (SGD: v = mu*v + g; p -= lr*v. Adam: bias-corrected moments),
so the same hyper-parameters mean the same thing in both backends.
"""
from __future__ import annotations

import numpy as np

from .layers import Params


class SGD:
    def __init__(self, params: Params, lr: float = 0.1, momentum: float = 0.0,
                 weight_decay: float = 0.0) -> None:
        self.params, self.lr, self.momentum, self.weight_decay = params, lr, momentum, weight_decay
        self.velocity = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, grads: Params) -> None:
        for k, g in grads.items():
            if self.weight_decay:
                g = g + self.weight_decay * self.params[k]
            if self.momentum:
                self.velocity[k] = self.momentum * self.velocity[k] + g
                g = self.velocity[k]
            self.params[k] -= self.lr * g


class Adam:
    def __init__(self, params: Params, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params, self.lr, self.betas, self.eps, self.t = params, lr, betas, eps, 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, grads: Params) -> None:
        self.t += 1
        b1, b2 = self.betas
        for k, g in grads.items():
            self.m[k] = b1 * self.m[k] + (1 - b1) * g
            self.v[k] = b2 * self.v[k] + (1 - b2) * g * g
            m_hat = self.m[k] / (1 - b1 ** self.t)
            v_hat = self.v[k] / (1 - b2 ** self.t)
            self.params[k] -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
