"""Boundary checks for LocalNet and the stage step: errors naming the stage, shapes and fix."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from .plan import Plan

if TYPE_CHECKING:  # local.py imports this module
    from .local import Stage


def dtype_name(dtype: torch.dtype) -> str:
    """'float32' for torch.float32."""
    return str(dtype).removeprefix("torch.")


def check_input(stage: Stage, x: torch.Tensor) -> None:
    """A floating input must match the stage's parameter dtype (integer token ids pass)."""
    want = stage.dtype
    if want is not None and x.is_floating_point() and x.dtype != want and stage.index > 0:
        raise TypeError(f"stage {stage.index} expects {dtype_name(want)} input (its weights' "
                        f"dtype) but stage {stage.index - 1} gives it {dtype_name(x.dtype)}; "
                        f"every stage of a net must share one dtype: convert them all, e.g. "
                        f"net.to(torch.{dtype_name(x.dtype)})")
    if want is not None and x.is_floating_point() and x.dtype != want:
        raise TypeError(f"stage {stage.index} expects {dtype_name(want)} input, got {dtype_name(x.dtype)}; "
                        f"convert the input with x.to(torch.{dtype_name(want)}) or the model with "
                        f"net.to(torch.{dtype_name(x.dtype)})")


def check_finite(stage: Stage, loss: float) -> None:
    if not math.isfinite(loss):
        raise FloatingPointError(f"stage {stage.index}: local loss is {loss} at step {stage.step_count}; "
                                 f"stopped before the update. Lower the lr or check the inputs")


def check_targets(stage: Stage, logits: torch.Tensor, y: torch.Tensor) -> None:
    """Labels cross_entropy can pair with the head's logits: integer class indices whose shape is
    the logits' without the class axis. Free (no device sync): it runs on every step."""
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"stage {stage.index}: labels must be integer class indices, got dtype "
                        f"{dtype_name(y.dtype)}; convert with y.long()")
    if logits.ndim < 2:
        raise ValueError(f"stage {stage.index}: head {stage.index} returned logits of shape "
                         f"{tuple(logits.shape)}; a classifier head must return scores (B, C), one "
                         f"per class (e.g. end it with nn.Linear(d, n_classes)), or (B, T, C)")
    want = tuple(logits.shape[:-1])
    if tuple(y.shape) != want:
        hint = ""
        if y.ndim == logits.ndim and y.shape[-1] == 1:
            hint = "; drop the extra axis with y.squeeze(-1)"
        elif y.ndim == logits.ndim and y.shape[-1] == logits.shape[-1]:
            hint = "; they look one-hot: use y.argmax(-1)"
        raise ValueError(f"stage {stage.index}: labels of shape {tuple(y.shape)} do not fit logits "
                         f"of shape {tuple(logits.shape)}; they must have shape {want}, one class "
                         f"index per {'position' if logits.ndim > 2 else 'example'}{hint}")


def check_labels(stage: Stage, logits: torch.Tensor, y: torch.Tensor) -> None:
    """Integer labels in [0, C) for a head with C outputs (the range costs a device sync)."""
    check_targets(stage, logits, y)
    check_label_range(stage, logits.shape[-1], y)


def check_label_range(stage: Stage, n_classes: int, y: torch.Tensor, name: str = "labels") -> None:
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(f"stage {stage.index}: {name} must lie in [0, {n_classes - 1}] for a head "
                         f"with {n_classes} outputs, got min {int(y.min())}, max {int(y.max())}")


def check_batch_size(where: str, x: torch.Tensor) -> None:
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"{where}: the batch is empty (x: {tuple(x.shape)}); a step needs at "
                         f"least one example along the first axis (check the batch size)")


def _embedding(block):
    return next((m for m in block.modules() if isinstance(m, nn.Embedding)), None)


def check_token_ids(stage: Stage, i: int, block: nn.Module, x: torch.Tensor) -> None:
    """Integer inputs of a block that embeds them must be rows of its (first) nn.Embedding."""
    emb = _embedding(block)
    if emb is None or x.is_floating_point() or not x.numel():
        return
    low, high = int(x.min()), int(x.max())
    if low < 0 or high >= emb.num_embeddings:
        raise ValueError(f"stage {stage.index}, block {i} of the stage ({type(block).__name__}): "
                         f"token ids must lie in [0, {emb.num_embeddings - 1}] for its "
                         f"nn.Embedding of {emb.num_embeddings} rows, got min {low}, max {high}; "
                         f"build the model with vocab_size >= {high + 1} (the tokenizer's "
                         f"vocab_size) or encode "
                         f"the text with the tokenizer the model was built for")


def block_failure(stage: Stage, i: int, block: nn.Module, x: torch.Tensor,
                  error: Exception) -> TypeError | RuntimeError:
    """The exception to raise when block i of a stage fails on x: the likely cause, named."""
    where = f"stage {stage.index}, block {i} of the stage ({type(block).__name__})"
    check_token_ids(stage, i, block, x)
    param = next((p for p in block.parameters() if p.is_floating_point()), None)
    if param is not None and param.dtype != x.dtype and _embedding(block) is None:
        if not x.is_floating_point():
            return TypeError(f"{where} has {dtype_name(param.dtype)} weights but got "
                             f"{dtype_name(x.dtype)} input; integer inputs fit only a block that "
                             f"embeds them (nn.Embedding): convert the input with "
                             f"x.to(torch.{dtype_name(param.dtype)})")
        return TypeError(f"{where} has {dtype_name(param.dtype)} weights but its input is "
                         f"{dtype_name(x.dtype)}; every block and head of a net must share one "
                         f"dtype: convert them all, e.g. net.to(torch.{dtype_name(x.dtype)})")
    return RuntimeError(f"{where} failed on an input of shape {tuple(x.shape)}, dtype "
                        f"{dtype_name(x.dtype)}: {error}. Check that each block's output shape is "
                        f"the next block's input shape.")


def check_devices(devices: str | torch.device | Iterable[str | torch.device] | None,
                  n_stages: int) -> list[torch.device]:
    """One torch.device per stage from None (all CPU), a single device, or a list."""
    if devices is None or isinstance(devices, (str, torch.device)):
        devices = [devices or "cpu"] * n_stages
    devices = list(devices)
    if len(devices) != n_stages:
        raise ValueError(f"LocalNet: devices must list one device per stage ({n_stages}), "
                         f"got {len(devices)}: {devices}")
    devices = [torch.device(d) for d in devices]
    for d in devices:
        if d.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"LocalNet: device {d} was asked for but CUDA is not available on "
                               f"this machine; use 'cpu' or minilocal.device()")
        if d.type == "cuda" and (d.index or 0) >= torch.cuda.device_count():
            raise RuntimeError(f"LocalNet: device {d} does not exist; this machine has "
                               f"{torch.cuda.device_count()} CUDA device(s)")
    return devices


def check_modules(blocks: Sequence[nn.Module], heads: Sequence[nn.Module],
                  plan: Plan) -> None:
    if len(blocks) != plan.n_blocks:
        raise ValueError(f"LocalNet: the plan has {plan.n_blocks} blocks but {len(blocks)} "
                         f"blocks were given; build the plan with the number of blocks")
    if len(heads) != plan.n_stages:
        raise ValueError(f"LocalNet: the plan has {plan.n_stages} stages, so it needs "
                         f"{plan.n_stages} heads (one per stage), got {len(heads)}")
    seen = {}
    for kind, modules in (("block", blocks), ("head", heads)):
        for i, m in enumerate(modules):
            if not isinstance(m, nn.Module):
                raise TypeError(f"LocalNet: {kind} {i} must be an nn.Module, got {type(m).__name__}")
            if id(m) in seen:  # a shared module would be trained by two optimizers at once
                raise ValueError(f"LocalNet: {kind} {i} is the same module object as {seen[id(m)]}; "
                                 f"build a separate module for each block and head")
            seen[id(m)] = f"{kind} {i}"
    check_shared_parameters(blocks, heads, plan)


def check_shared_parameters(blocks: Sequence[nn.Module], heads: Sequence[nn.Module],
                            plan: Plan) -> None:
    """Refuse a parameter (or buffer) held by modules of two stages, as torchgpipe does: each
    stage's optimizer would update it, and a loss would train a block outside ``trained_by``."""
    owner = {}  # id(tensor) -> (stage, where it was first seen)
    modules = [(plan.stage_of(b), f"block {b}", m) for b, m in enumerate(blocks)]
    modules += [(s, f"head {s}", m) for s, m in enumerate(heads)]
    for s, where, module in modules:
        tensors = [*module.named_parameters(remove_duplicate=False),
                   *module.named_buffers(remove_duplicate=False)]
        for name, t in tensors:
            first = owner.setdefault(id(t), (s, f"{where} ({name})"))
            if first[0] != s:
                raise ValueError(f"LocalNet: {first[1]} of stage {first[0]} and {where} ({name}) "
                                 f"of stage {s} share one tensor of shape {tuple(t.shape)}; a "
                                 f"tensor must belong to one stage, or two stages' optimizers "
                                 f"would update it. Untie them (give each its own module, e.g. a "
                                 f"head's own nn.Linear instead of the embedding's weight) or "
                                 f"put both modules in one stage")
