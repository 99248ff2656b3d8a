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
import math
from collections.abc import Mapping
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoint import data_hash, read_checkpoint, recipe_of, write_checkpoint
from .data import check_writable
from .local import LocalNet
from .validate import check_int

HISTORY_KEYS = ("step", "train_loss", "test_loss", "test_acc")


def cosine(steps):
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
    for stage in net.stages:
        for group in stage.optimizer.param_groups:
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


def evaluate(net, x, y, batch_size=1024):
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


def _load(path, net, recipe, steps):
    """Resume state from a verified checkpoint of this very run (CheckpointError otherwise)."""
    state = read_checkpoint(path, recipe)
    if state["step"] > steps:
        raise ValueError(f"fit: checkpoint {path} is at step {state['step']}, past steps={steps}; "
                         f"ask for at least {state['step']} steps")
    net.load_state_dict(state["model"])
    for stage, opt_state, count in zip(net.stages, state["optimizers"], state["stage_steps"]):
        stage.optimizer.load_state_dict(opt_state)  # casts state onto the parameters' devices
        stage.step_count = count
    torch.set_rng_state(state["rng"]["torch"])
    if torch.cuda.is_available() and state["rng"]["cuda"]:
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state


def _preflight(net, x, y, x_test, y_test):
    """One checked dry run of a training and a test batch, and every label's range: a bad input
    fails here, before any step, and not at the first evaluation after training."""
    net.check_batch(x[:2], y[:2], labels=(("y", y), ("y_test", y_test)))
    net.check_batch(x_test[:2], y_test[:2])


def fit(net, data, steps=None, epochs=None, batch_size=128, lr_schedule=None, eval_every=100,
        seed=0, progress=True, checkpoint=None, checkpoint_every=None, resume=False, device=None,
        eval_batch_size=1024, callback=None):
    """Train ``net`` (a LocalNet, in place) on ``data``; returns the history dict.

    Give ``steps`` or ``epochs`` (one pass = N // batch_size steps; a partial batch is dropped).
    ``lr_schedule``: None, 'cosine' or a callable ``step -> factor`` multiplying every stage's
    initial lr. ``checkpoint``: a file path written every ``checkpoint_every`` steps (default
    ``eval_every``) and at the end; with ``resume`` a run continues from it (a finished run just
    returns its history). ``device``: None keeps the net where it is, 'auto' picks
    ``minilocal.device()``, anything else is passed to ``net.to_devices``. ``seed`` fixes the batch
    order and seeds torch's global generator (dropout and other randomness inside the model).
    ``callback(step, losses)`` is called after every step with the K stage losses (e.g. a
    ``minilocal.dashboard.Dashboard``'s ``log``).
    """
    if not isinstance(net, LocalNet):
        raise TypeError(f"fit: net must be a minilocal.LocalNet, got {type(net).__name__}")
    x, y, x_test, y_test = _tensors(data)
    # the data set's hash, before any dtype or device change
    digest = None if checkpoint is None else data_hash([x, y, x_test, y_test])
    n = len(x)
    for name, value in (("batch_size", batch_size), ("eval_every", eval_every),
                        ("eval_batch_size", eval_batch_size), ("checkpoint_every", checkpoint_every)):
        check_int("fit", name, value, 1, none_ok=True)
    if batch_size > n:
        raise ValueError(f"fit: batch_size {batch_size} is larger than the {n} training examples")
    if (steps is None) == (epochs is None):
        raise ValueError(f"fit: give exactly one of steps or epochs, got steps={steps!r}, "
                         f"epochs={epochs!r}")
    steps = steps if epochs is None else epochs * (n // batch_size)
    check_int("fit", "the number of steps", steps, 1)
    if checkpoint is not None:
        check_writable(checkpoint, "fit: checkpoint")
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
    schedule = _schedule(lr_schedule, steps)
    for stage in net.stages:
        for group in stage.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
    checkpoint_every = checkpoint_every or eval_every

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout and other randomness inside the model
    history = {key: [] for key in HISTORY_KEYS}
    running, order, pos, start = [], torch.randperm(n, generator=gen), 0, 0
    recipe = None if checkpoint is None else recipe_of(net, batch_size, seed, digest)
    if resume and checkpoint is not None and Path(checkpoint).exists():
        state = _load(checkpoint, net, recipe, steps)
        gen.set_state(state["rng"]["batches"])
        history, running, order, pos, start = (state["history"], state["running"], state["order"],
                                               state["pos"], state["step"])

    def save(step):
        write_checkpoint(checkpoint, recipe, {
            "step": step, "model": net.state_dict(),
            "optimizers": [s.optimizer.state_dict() for s in net.stages],
            "stage_steps": [s.step_count for s in net.stages], "history": history,
            "running": running, "order": order, "pos": pos,
            "rng": {"torch": torch.get_rng_state(), "batches": gen.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}})

    bar = tqdm(total=steps, initial=start, desc=net.plan.name or "fit", disable=not progress)
    shown = {}  # the bar's postfix: output-head train loss and test accuracy
    net.train()
    try:
        for step in range(start + 1, steps + 1):
            if pos + batch_size > n:
                order, pos = torch.randperm(n, generator=gen), 0
            idx = order[pos:pos + batch_size].to(x.device)
            pos += batch_size
            if schedule is not None:
                _set_lr(net, schedule(step - 1), step - 1)
            running.append(net.train_step(x[idx], y[idx]))
            if callback is not None:
                callback(step, running[-1])
            bar.update(1)
            if step % 10 == 0:  # the output head's loss, averaged since the last evaluation
                shown["loss"] = f"{sum(r[-1] for r in running) / len(running):.3f}"
                bar.set_postfix(shown, refresh=False)
            if step % eval_every == 0 or step == steps:
                test_loss, test_acc = evaluate(net, x_test, y_test, eval_batch_size)
                history["step"].append(step)
                history["train_loss"].append([sum(col) / len(running) for col in zip(*running)])
                history["test_loss"].append(test_loss)
                history["test_acc"].append(test_acc)
                running = []
                shown["test_acc"] = f"{test_acc[-1]:.3f}"
            if checkpoint is not None and (step % checkpoint_every == 0 or step == steps):
                save(step)
    finally:  # an error or an interrupt must not leave the bar open
        bar.close()
    return history
