"""Checkpoints that verify themselves: ``FitCheckpoint`` (save and resume a ``fit`` run) on top of
``write_checkpoint`` and ``read_checkpoint``.

A checkpoint is a ``torch.save`` dict: a format name and version, the step, the run's *recipe*
(Plan, model classes and weight shapes, each stage's optimizer with its settings, batch size,
seed, a sha256 of the data set) and the training state as one payload of bytes, with a sha256 of
recipe and payload. Reading checks, in order, that the file is one of ours, of this version,
intact, and of this very run, and only then unpickles the state (``weights_only=True``): a
damaged file, a plain state_dict or another run's checkpoint is refused, saying what differs,
before any weight is touched.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .data import atomic_write
from .guards import dtype_name

if TYPE_CHECKING:  # train.py imports this module and both of these
    from .batches import BatchOrder
    from .local import LocalNet

FORMAT, VERSION = "minilocal.fit checkpoint", 2
FIX = "delete it or use a new checkpoint path"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: damaged, of another format, or of another run."""


def data_hash(tensors: Iterable[torch.Tensor]) -> str:
    """sha256 (hex) of tensors' dtypes, shapes and bytes: which data set a run trained on."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{dtype_name(t.dtype)}{len(t)};".encode())
        h.update(t.view(torch.uint8).numpy())  # any dtype as its raw bytes
    return h.hexdigest()


def _optimizer(opt):
    settings = ", ".join(f"{k}={v!r}" for k, v in sorted(opt.defaults.items()))
    return f"{type(opt).__name__}({settings})"


def recipe_of(net: LocalNet, batch_size: int, seed: int, digest: str | None) -> dict[str, Any]:
    """What must match for a run to resume another: plan, model, optimizers, batches, data."""
    return {"plan": {"stages": [list(s) for s in net.plan.stages], "overlap": net.plan.overlap},
            "model": ", ".join(type(m).__name__ for m in [*net.blocks, *net.heads]),
            "weights": {k: f"{tuple(v.shape)} {dtype_name(v.dtype)}"
                        for k, v in net.state_dict().items()},
            "optimizer": [_optimizer(opt) for opt in net.optimizers],
            "batch_size": batch_size, "seed": seed, "data": digest}


def _digest(step, recipe, payload):
    head = json.dumps({"step": step, "recipe": recipe}, sort_keys=True).encode()
    return hashlib.sha256(head + payload).hexdigest()


def write_checkpoint(path: str | os.PathLike[str], recipe: dict[str, Any],
                     state: dict[str, Any]) -> None:
    """Save ``state`` (a dict with "step") for ``recipe`` atomically (``data.atomic_write``)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    outer = {"format": FORMAT, "version": VERSION, "step": state["step"], "recipe": recipe,
             "sha256": _digest(state["step"], recipe, payload), "payload": payload}
    atomic_write(path, lambda tmp: torch.save(outer, tmp))


def _what_it_holds(outer):
    if isinstance(outer, dict) and {"plan", "model", "optimizers"} <= set(outer):
        return "a checkpoint of an older minilocal (format 1, without integrity checks)"
    if isinstance(outer, dict) and outer and \
            all(isinstance(v, torch.Tensor) for v in outer.values()):
        return ("a plain state_dict; load weights with net.load_state_dict(torch.load(path)) and "
                "train without resume")
    return f"a {type(outer).__name__}"


def _first_difference(theirs, ours):
    """(key, their value, our value) of the first recipe entry that differs, or None."""
    for key in ours:
        a, b = theirs.get(key), ours[key]
        if key == "weights" and isinstance(a, dict):
            for name in [*b, *(n for n in a if n not in b)]:  # the net's order
                if a.get(name) != b.get(name):
                    return f"weight {name}", a.get(name, "absent"), b.get(name, "absent")
        elif key == "optimizer" and isinstance(a, list) and len(a) == len(b):
            for s, (x, y) in enumerate(zip(a, b)):
                if x != y:
                    return f"optimizer of stage {s}", x, y
        elif a != b:
            return key, a, b
    return None


def _check_recipe(path, theirs, ours):
    diff = _first_difference(theirs, ours)
    if diff is None:
        return
    key, a, b = diff
    if key == "data":
        raise CheckpointError(f"fit: checkpoint {path} was written on other data (data set "
                              f"sha256 {str(a)[:12]}..., this run's is {b[:12]}...); resume on "
                              f"the same data or use a new path")
    raise CheckpointError(f"fit: checkpoint {path} was written with {key}={a}, this run has "
                          f"{key}={b}; resume with the same settings or use a new path")


def read_checkpoint(path: str | os.PathLike[str], recipe: dict[str, Any]) -> dict[str, Any]:
    """The training state of the checkpoint at ``path``, verified against this run's
    ``recipe``; raises CheckpointError saying what is wrong before anything is loaded."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise CheckpointError(f"fit: checkpoint {path} is empty (0 bytes): not a checkpoint; {FIX}")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":  # torch.save writes a zip file
        raise CheckpointError(f"fit: {path} is not a checkpoint: not a torch.save file (it starts "
                              f"with {head!r}); {FIX}")
    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"fit: {path} is not a minilocal fit checkpoint: it holds objects "
                              f"that a checkpoint never holds (torch.load with weights_only "
                              f"refused them); {FIX}") from None
    except Exception as e:  # noqa: BLE001 - a damaged file fails in many ways, all the same to us
        raise CheckpointError(f"fit: checkpoint {path} is damaged: torch.load could not read it "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); {FIX}") \
            from None
    if not isinstance(outer, dict) or outer.get("format") != FORMAT:
        raise CheckpointError(f"fit: {path} is not a minilocal fit checkpoint: it holds "
                              f"{_what_it_holds(outer)}; {FIX}")
    if outer.get("version") != VERSION:
        raise CheckpointError(f"fit: checkpoint {path} has format version {outer.get('version')!r}"
                              f"; this minilocal reads version {VERSION}; {FIX}")
    payload = outer.get("payload")
    if not isinstance(payload, bytes) or not isinstance(outer.get("recipe"), dict) or \
            outer.get("sha256") != _digest(outer.get("step"), outer["recipe"], payload):
        raise CheckpointError(f"fit: checkpoint {path} is damaged: its contents do not match its "
                              f"sha256 (changed or corrupted after it was written); {FIX}")
    _check_recipe(path, outer["recipe"], recipe)
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)


@dataclass
class FitState:
    """Where a ``fit`` run is: the last finished step, the history, the step losses since the last
    evaluation."""
    history: dict[str, list[Any]]
    running: list[list[float]] = field(default_factory=list)
    step: int = 0


class FitCheckpoint:
    """The checkpoint file of one ``fit`` run: everything the next step depends on (weights, every
    optimizer, the step, the batch order, the RNG states, the history) saved and resumed in one
    place, so a resumed run ends bitwise where the uninterrupted one would."""

    def __init__(self, path: str | os.PathLike[str], recipe: dict[str, Any]) -> None:
        self.path, self.recipe = path, recipe

    def exists(self) -> bool:
        return Path(self.path).exists()

    def save(self, net: LocalNet, batches: BatchOrder, run: FitState) -> None:
        """Write the state after step ``run.step``; ``batches``: the run's ``BatchOrder``."""
        write_checkpoint(self.path, self.recipe, {
            "step": run.step, "model": net.state_dict(),
            "optimizers": [opt.state_dict() for opt in net.optimizers],
            "stage_steps": [s.step_count for s in net.stages], "history": run.history,
            "running": run.running, "order": batches.order, "pos": batches.pos,
            "rng": {"torch": torch.get_rng_state(), "batches": batches.generator.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}})

    def resume(self, net: LocalNet, batches: BatchOrder, run: FitState, steps: int) -> None:
        """Load the verified checkpoint into ``net``, ``batches`` and ``run`` (CheckpointError if
        it is not one of this very run)."""
        state = read_checkpoint(self.path, self.recipe)
        if state["step"] > steps:
            raise ValueError(f"fit: checkpoint {self.path} is at step {state['step']}, past "
                             f"steps={steps}; ask for at least {state['step']} steps")
        net.load_state_dict(state["model"])
        for opt, opt_state in zip(net.optimizers, state["optimizers"]):
            opt.load_state_dict(opt_state)  # casts state onto the parameters' devices
        for stage, count in zip(net.stages, state["stage_steps"]):
            stage.step_count = count
        torch.set_rng_state(state["rng"]["torch"])
        if torch.cuda.is_available() and state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        batches.generator.set_state(state["rng"]["batches"])
        batches.order, batches.pos = state["order"], state["pos"]
        run.history, run.running, run.step = state["history"], state["running"], state["step"]
