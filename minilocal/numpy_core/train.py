"""The NumPy training loop: minibatch SGD/Adam on local gradients, with per-stage history.

History format (shared with the torch loop): a dict of lists, one entry per evaluation
``step``; ``train_loss``, ``test_loss`` and ``test_acc`` hold one value per stage.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..batches import BatchOrder
from ..plan import Plan
from ..validate import check_choice, check_int
from .layers import Params, softmax_cross_entropy_fwd
from .mlp import forward, local_grads
from .optim import SGD, Adam

OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def evaluate(params: Params, x: np.ndarray, y: np.ndarray, plan: Plan,
             activation: str = "relu") -> tuple[list[float], list[float]]:
    """Per-stage test loss and accuracy, from every head (batch-free: x is (N, D))."""
    _, _, heads = forward(params, x, plan, activation)
    losses = [float(softmax_cross_entropy_fwd(logits, y)[0]) for logits, _ in heads]
    accs = [float((logits.argmax(axis=1) == y).mean()) for logits, _ in heads]
    return losses, accs


def train(params: Params, plan: Plan, data: Mapping[str, np.ndarray], steps: int = 1000,
          batch_size: int = 128, optimizer: str = "adam", lr: float = 1e-3, momentum: float = 0.9,
          eval_every: int = 100, seed: int = 0, activation: str = "relu",
          progress: bool = True) -> dict[str, list[Any]]:
    """Train ``params`` in place with the Plan's local gradients; returns the history dict."""
    check_choice("train", "optimizer", optimizer, sorted(OPTIMIZERS))
    for name, value in (("steps", steps), ("batch_size", batch_size), ("eval_every", eval_every)):
        check_int("train", name, value, 1)
    kwargs = {"lr": lr, "momentum": momentum} if optimizer == "sgd" else {"lr": lr}
    opt = OPTIMIZERS[optimizer](params, **kwargs)
    x, y = data["x"].astype(next(iter(params.values())).dtype), data["y"]
    batches = BatchOrder(len(x), batch_size, seed, mode="numpy", where="train")
    history = {"step": [], "train_loss": [], "test_loss": [], "test_acc": []}
    running = []
    for step in tqdm(range(1, steps + 1), desc=f"numpy {plan.name or 'plan'}", disable=not progress):
        idx = next(batches)
        grads, losses = local_grads(params, x[idx], y[idx], plan, activation)
        opt.step(grads)
        running.append(losses)
        if step % eval_every == 0 or step == steps:
            test_loss, test_acc = evaluate(params, data["x_test"].astype(x.dtype), data["y_test"],
                                           plan, activation)
            history["step"].append(step)
            history["train_loss"].append([float(v) for v in np.mean(running, axis=0)])
            history["test_loss"].append(test_loss)
            history["test_acc"].append(test_acc)
            running = []
    return history
