"""Boundary checks for LocalNet and the stage step: errors naming the stage, shapes and fix."""
import math

import torch
from torch import nn


def dtype_name(dtype):
    """'float32' for torch.float32."""
    return str(dtype).removeprefix("torch.")


def check_input(stage, x):
    """A floating input must match the stage's parameter dtype (integer token ids pass)."""
    want = stage.dtype
    if want is not None and x.is_floating_point() and x.dtype != want:
        raise TypeError(f"stage {stage.index} expects {dtype_name(want)} input, got {dtype_name(x.dtype)}; "
                        f"convert the input with x.to(torch.{dtype_name(want)}) or the model with "
                        f"net.to(torch.{dtype_name(x.dtype)})")


def check_finite(stage, loss):
    if not math.isfinite(loss):
        raise FloatingPointError(f"stage {stage.index}: local loss is {loss} at step {stage.step_count}; "
                                 f"stopped before the update. Lower the lr or check the inputs")


def check_labels(stage, logits, y):
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"stage {stage.index}: labels must be integer class indices, got dtype "
                        f"{dtype_name(y.dtype)}; convert with y.long()")
    n_classes = logits.shape[-1]
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(f"stage {stage.index}: labels must lie in [0, {n_classes - 1}] for a head "
                         f"with {n_classes} outputs, got min {int(y.min())}, max {int(y.max())}")


def check_devices(devices, n_stages):
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


def check_modules(blocks, heads, plan):
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
