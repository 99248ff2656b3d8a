"""The one training loop for every model and every Plan: ``fit(net, data, steps=...)``.

``data`` is a dict of arrays (NumPy or torch) with the examples along the first axis: ``x``,
``y``, ``x_test``, ``y_test``. Classification: x (N, D) or (N, C, T), y (N,). Language model:
x and y (N, T) token ids. History format (shared with ``minilocal.numpy_core.train``): a dict of
lists, one entry per evaluation ``step``; ``train_loss``, ``test_loss`` and ``test_acc`` hold one
value per stage (the last is the output head).

Everything is checked before the first step: the data against the net (one checked dry run of a
training and a test batch, every label's range) and the checkpoint path (writable).

A checkpoint holds everything the next step depends on (weights, every optimizer, the step, the
batch order, the RNG states, the history), so an interrupted run resumed from it ends bitwise
where the uninterrupted run would (``checkpoint.py``: written atomically, verified on reading).
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from .batches import BatchOrder
from .checkpoint import FitCheckpoint, FitState, data_hash, recipe_of
from .data import check_writable
from .local import LocalNet
from .validate import check_int

if TYPE_CHECKING:
    import numpy as np

HISTORY_KEYS = ("step", "train_loss", "test_loss", "test_acc")


def cosine(steps: int) -> Callable[[int], float]:
    """lr factor for step t in [0, steps): 1 at the start, decaying to ~0 at the end."""
    return lambda t: 0.5 * (1 + math.cos(math.pi * t / steps))


def _schedule(lr_schedule, steps):
    if lr_schedule is None:
        return None
    if lr_schedule == "cosine":
        return cosine(steps)
    if callable(lr_schedule):
        return lr_schedule
    raise ValueError(f"fit: lr_schedule must be None, 'cosine' or a callable step -> lr factor, "
                     f"got {lr_schedule!r}")


def _set_lr(net, factor, step):
    if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor >= 0):
        raise ValueError(f"fit: lr_schedule({step}) returned {factor!r}; it must return a finite "
                         f"factor >= 0 that multiplies each optimizer's initial lr")
    for opt in net.optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * factor


def _tensors(data):
    if not isinstance(data, Mapping):
        raise TypeError(f"fit: data must be a dict with keys x, y, x_test, y_test (e.g. "
                        f"minilocal.data.mnist1d()), got {type(data).__name__}")
    missing = [k for k in ("x", "y", "x_test", "y_test") if k not in data]
    if missing:
        raise KeyError(f"fit: data must be a dict with keys x, y, x_test, y_test; missing {missing}")
    out = []
    for k in ("x", "y", "x_test", "y_test"):
        try:
            out.append(torch.as_tensor(data[k]))
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"fit: data[{k!r}] cannot be made a tensor ({e}); give a numpy array "
                            f"or a torch tensor with the examples along the first axis") from None
        if out[-1].ndim == 0:
            raise ValueError(f"fit: data[{k!r}] is a scalar; give one entry per example along the "
                             f"first axis")
    for (a, b), name in zip([(out[0], out[1]), (out[2], out[3])], ("", "_test")):
        if len(a) != len(b) or not len(a):
            raise ValueError(f"fit: x{name} has {len(a)} examples and y{name} has {len(b)}; they "
                             f"must be the same number, at least 1")
    return out


def evaluate(net: LocalNet, x: torch.Tensor, y: torch.Tensor,
             batch_size: int = 1024) -> tuple[list[float], list[float]]:
    """Every head's mean loss and accuracy on (x, y): two lists of K floats. x: (N, ...), y: (N, ...).

    Runs in eval mode (restored afterwards). Accuracy counts argmax == label per label, so for a
    language model (y: (N, T)) it is the per-token accuracy.
    """
    was_training = net.training
    net.eval()
    k = len(net.stages)
    loss_sum, correct, count = [0.0] * k, [0] * k, 0
    try:
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            for s, logits in enumerate(net.stage_outputs(xb)):
                yb_s = yb.to(logits.device)
                loss_sum[s] += net.stages[s].loss_fn(logits, yb_s).item() * yb.numel()
                correct[s] += int((logits.argmax(-1) == yb_s).sum())
            count += yb.numel()
    finally:
        net.train(was_training)
    return [v / count for v in loss_sum], [c / count for c in correct]


def _preflight(net, x, y, x_test, y_test):
    """One checked dry run of a training and a test batch, and every label's range: a bad input
    fails here, before any step, and not at the first evaluation after training."""
    net.check_batch(x[:2], y[:2], labels=(("y", y), ("y_test", y_test)))
    net.check_batch(x_test[:2], y_test[:2])


def check_fit(net: LocalNet, data: Mapping[str, np.ndarray | torch.Tensor], steps: int | None,
              epochs: int | None, batch_size: int, eval_every: int, eval_batch_size: int,
              checkpoint: str | os.PathLike[str] | None, checkpoint_every: int | None,
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Every argument check of ``fit`` that needs no step: returns (x, y, x_test, y_test, steps)."""
    if not isinstance(net, LocalNet):
        raise TypeError(f"fit: net must be a minilocal.LocalNet, got {type(net).__name__}")
    if not net.trainable:
        raise ValueError("fit: the net was built with optimizer=None (evaluation only); build it "
                         "with an optimizer factory to train it")
    x, y, x_test, y_test = _tensors(data)
    n = len(x)
    for name, value in (("batch_size", batch_size), ("eval_every", eval_every),
                        ("eval_batch_size", eval_batch_size)):
        check_int("fit", name, value, 1)
    check_int("fit", "checkpoint_every", checkpoint_every, 1, none_ok=True)  # None: eval_every
    if batch_size > n:
        raise ValueError(f"fit: batch_size {batch_size} is larger than the {n} training examples")
    if (steps is None) == (epochs is None):
        raise ValueError(f"fit: give exactly one of steps or epochs, got steps={steps!r}, "
                         f"epochs={epochs!r}")
    steps = steps if epochs is None else epochs * (n // batch_size)
    check_int("fit", "the number of steps", steps, 1)
    if checkpoint is not None:
        check_writable(checkpoint, "fit: checkpoint")
    return x, y, x_test, y_test, steps


def _place(net, device, progress, x, y, x_test, y_test):
    """Move the net (``device``) and the data to it, then one checked dry run."""
    if device is not None:
        if device == "auto":
            from .devices import device as pick

            device = pick(verbose=progress)
        net.to_devices(device)
    first = net.stages[0]
    if x.is_floating_point() and first.dtype is not None:  # data follows the model, like numpy's train
        x, x_test = x.to(first.dtype), x_test.to(first.dtype)
    x, y = x.to(first.device), y.to(first.device)  # the whole (small) training set moves once
    _preflight(net, x, y, x_test, y_test)
    return x, y, x_test, y_test


def fit(net: LocalNet, data: Mapping[str, np.ndarray | torch.Tensor], steps: int | None = None,
        epochs: int | None = None, batch_size: int = 128,
        lr_schedule: str | Callable[[int], float] | None = None, eval_every: int = 100,
        seed: int = 0, progress: bool = True, checkpoint: str | os.PathLike[str] | None = None,
        checkpoint_every: int | None = None, resume: bool = False,
        device: str | torch.device | Iterable[str | torch.device] | None = None,
        eval_batch_size: int = 1024,
        callback: Callable[[int, list[float]], object] | None = None) -> dict[str, list[Any]]:
    """Train ``net`` (a LocalNet, in place) on ``data``; returns the history dict.

    Give ``steps`` or ``epochs`` (one pass = N // batch_size steps; a partial batch is dropped).
    ``lr_schedule``: None, 'cosine' or a callable ``step -> factor`` multiplying every stage's
    initial lr. ``checkpoint``: a file path written every ``checkpoint_every`` steps (default
    ``eval_every``) and at the end; with ``resume`` a run continues from it (a finished run just
    returns its history). ``device``: None keeps the net where it is, 'auto' picks
    ``minilocal.device()``, anything else is passed to ``net.to_devices``. ``seed`` fixes the batch
    order and seeds torch's global generator (dropout and other randomness inside the model).
    ``callback(step, losses)`` is called after every step with the K stage losses (e.g. a
    ``minilocal.viz.dashboard.Dashboard``'s ``log``).
    """
    x, y, x_test, y_test, steps = check_fit(net, data, steps, epochs, batch_size, eval_every,
                                            eval_batch_size, checkpoint, checkpoint_every)
    # the data set's hash, before any dtype or device change
    digest = None if checkpoint is None else data_hash([x, y, x_test, y_test])
    x, y, x_test, y_test = _place(net, device, progress, x, y, x_test, y_test)
    schedule = _schedule(lr_schedule, steps)
    for opt in net.optimizers:
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
    batches = BatchOrder(len(x), batch_size, seed, mode="torch", where="fit")
    torch.manual_seed(seed)  # dropout and other randomness inside the model
    run = FitState({key: [] for key in HISTORY_KEYS})
    saver = None if checkpoint is None else \
        FitCheckpoint(checkpoint, recipe_of(net, batch_size, seed, digest))
    if resume and saver is not None and saver.exists():
        saver.resume(net, batches, run, steps)
    _loop(net, (x, y), (x_test, y_test), batches, run, steps, schedule, eval_every,
          eval_batch_size, saver, checkpoint_every or eval_every, progress, callback)
    return run.history


def _loop(net, train, test, batches, run, steps, schedule, eval_every, eval_batch_size, saver,
          checkpoint_every, progress, callback):
    """Steps ``run.step + 1 .. steps``: a batch, the lr, the step, and at its times an evaluation
    into ``run.history`` and a checkpoint."""
    (x, y), (x_test, y_test) = train, test
    bar = tqdm(total=steps, initial=run.step, desc=net.plan.name or "fit", disable=not progress)
    shown = {}  # the bar's postfix: output-head train loss and test accuracy
    net.train()
    try:
        for step in range(run.step + 1, steps + 1):
            idx = next(batches).to(x.device)
            if schedule is not None:
                _set_lr(net, schedule(step - 1), step - 1)
            run.running.append(net.train_step(x[idx], y[idx]))
            run.step = step
            if callback is not None:
                callback(step, run.running[-1])
            bar.update(1)
            if step % 10 == 0:  # the output head's loss, averaged since the last evaluation
                shown["loss"] = f"{sum(r[-1] for r in run.running) / len(run.running):.3f}"
                bar.set_postfix(shown, refresh=False)
            if step % eval_every == 0 or step == steps:
                test_loss, test_acc = evaluate(net, x_test, y_test, eval_batch_size)
                history = run.history
                history["step"].append(step)
                history["train_loss"].append([sum(c) / len(run.running) for c in zip(*run.running)])
                history["test_loss"].append(test_loss)
                history["test_acc"].append(test_acc)
                run.running = []
                shown["test_acc"] = f"{test_acc[-1]:.3f}"
            if saver is not None and (step % checkpoint_every == 0 or step == steps):
                saver.save(net, batches, run)
    finally:  # an error or an interrupt must not leave the bar open
        bar.close()
