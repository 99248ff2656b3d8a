"""The stage step and its messages: what one stage of a LocalNet does, for every runner.

The unit of work is the **stage step**, ``stage_step(stage, x_in, y) -> StepResult``: forward
through the stage's blocks, the head, the local loss, backward inside the stage, optionally the
optimizer update. It returns the *detached* output, which is all that travels to the next stage
for greedy and chunked plans. Every runner (LocalNet's synchronous loop, the simulator, the
distributed workers) calls this one function.

Overlap (a loss that trains blocks of the previous stage) is implemented with a **one-hop
backward message**: stage s makes its input require grad, so its backward also yields
``grad_in = d l_s / d x_in``; the previous stage keeps the graph of its last forward and
backpropagates that message through its last ``reach`` blocks (``receive_grad``). We chose the
message over duplicating the block because a duplicate would have to be kept in sync with its
owner's weights; the message is one activation-sized tensor and the owner stays the only writer.
A message that has to go further back than one stage continues hop by hop; one that arrives after
the stage has updated is ``receive_stale_grad``.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .guards import (block_failure, check_batch_size, check_finite, check_input, check_labels,
                     check_targets, check_token_ids, dtype_name)


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy; logits (B, C) or (B, T, C) with integer y (B,) or (B, T)."""
    if logits.ndim > 2:
        logits, y = logits.reshape(-1, logits.shape[-1]), y.reshape(-1)  # (B*T, C), (B*T,)
    if y.dtype != torch.int64 and not y.is_floating_point():
        y = y.long()  # F.cross_entropy takes only int64 class indices; floats are refused below
    return F.cross_entropy(logits, y)


@dataclass
class Stage:
    """What one stage owns: its blocks, its head, its optimizer and where they live."""
    index: int
    blocks: list[nn.Module]
    head: nn.Module
    optimizer: torch.optim.Optimizer | None  # None under LocalNet(fast=True): one for all
    reach: int = 0                     # blocks of earlier stages that this stage's loss trains
    device: torch.device = torch.device("cpu")
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy
    keep_graph: bool = False           # a later stage will send a backward message here
    step_count: int = 0
    _x_in: torch.Tensor | None = None  # graph kept for the message (only when keep_graph)
    _out: torch.Tensor | None = None
    _loss: torch.Tensor | None = None  # last local loss, checked before the update

    def parameters(self) -> Iterator[nn.Parameter]:
        for module in [*self.blocks, self.head]:
            yield from module.parameters()

    @property
    def dtype(self) -> torch.dtype | None:
        """The floating dtype of the stage's parameters (None if it has none)."""
        return None if self._probe is None else self._probe.dtype

    def __post_init__(self) -> None:
        # Parameters keep their identity through .to()/.double(), so this one tells the live dtype.
        self._probe = next((p for p in self.parameters() if p.is_floating_point()), None)

    def release(self) -> None:
        """Drop the graph kept for backward messages (frees its saved activations)."""
        self._x_in = self._out = None

    def update(self) -> None:
        """Optimizer step, then clear gradients and any kept graph. Refuses a non-finite loss
        (and discards that step's gradients, so they cannot poison the next one)."""
        if self.optimizer is None:
            raise RuntimeError(f"stage {self.index} has no optimizer of its own: its LocalNet "
                               f"was built with fast=True, one optimizer step over all stages "
                               f"(net.step()), or with optimizer=None, for evaluation only; "
                               f"build it without fast=True to update stages one by one")
        if self._loss is not None and not math.isfinite(float(self._loss)):
            loss = float(self._loss)
            self.discard()
            check_finite(self, loss)
        self.optimizer.step()
        self.discard()

    def discard(self) -> None:
        """Drop this step's gradients, kept graph and loss without updating."""
        if self.optimizer is None:
            for p in self.parameters():
                p.grad = None
        else:
            self.optimizer.zero_grad(set_to_none=True)
        self.release()
        self._loss = None


@dataclass
class StepResult:
    x_out: torch.Tensor            # detached output of the stage's last block: the forward message
    loss: torch.Tensor             # detached scalar local loss
    grad_in: torch.Tensor | None = None  # d l_s / d x_in when the loss reaches back (overlap > 0)


def forward_blocks(stage: Stage, x: torch.Tensor) -> torch.Tensor:
    """Stage ``stage``'s blocks on x, with the input and token-id checks and errors that name the
    block that failed."""
    check_input(stage, x)
    for i, block in enumerate(stage.blocks):
        if stage.device.type == "cuda" and not x.is_floating_point():
            check_token_ids(stage, i, block, x)  # on a GPU a bad id is an unrecoverable assert
        try:
            x = block(x)
        except (RuntimeError, IndexError) as e:  # on CPU, explain only when it fails: no cost
            raise block_failure(stage, i, block, x, e) from e
    return x


def head_logits(stage: Stage, h: torch.Tensor) -> torch.Tensor:
    """Stage ``stage``'s head on its output h; a dtype or shape mismatch is named."""
    try:
        return stage.head(h)
    except RuntimeError as e:
        weights = next((p for p in stage.head.parameters() if p.is_floating_point()), None)
        if weights is not None and h.is_floating_point() and weights.dtype != h.dtype:
            raise TypeError(f"stage {stage.index}: head {stage.index} has "
                            f"{dtype_name(weights.dtype)} weights but the stage's output is "
                            f"{dtype_name(h.dtype)}; every block and head of a net must share one "
                            f"dtype: convert them all, e.g. "
                            f"net.to(torch.{dtype_name(h.dtype)})") from e
        raise RuntimeError(f"stage {stage.index}: head {stage.index} ({type(stage.head).__name__}) "
                           f"failed on the stage's output of shape {tuple(h.shape)}: {e}. The head "
                           f"must accept the output of the stage's last block.") from e


def _local_loss(stage, logits, y):
    checked = stage.loss_fn is cross_entropy
    if checked:
        check_targets(stage, logits, y)  # dtype and shape: free, so on every step
        if stage.device.type != "cpu":
            check_labels(stage, logits, y)  # on a GPU a bad label is an unrecoverable device assert
    try:
        return stage.loss_fn(logits, y)
    except (IndexError, RuntimeError):
        if checked:  # on CPU, explain the failure only when it happens: no cost on good batches
            check_labels(stage, logits, y)
        raise


def stage_step(stage: Stage, x_in: torch.Tensor, y: torch.Tensor,
               update: bool = True) -> StepResult:
    """One local step of ``stage`` on a batch. x_in: the previous stage's output (or the input).

    Accumulates gradients of the stage's loss into its blocks and head (and, through ``grad_in``,
    offers the part that belongs to earlier blocks). With ``update`` it also takes the optimizer
    step; a stage that expects a backward message must wait for it (``update=False``).
    """
    check_batch_size(f"stage {stage.index}", x_in)  # an empty batch has a NaN mean loss
    fast = stage.device.type == "cuda"  # a copy to a GPU is stream-ordered; one to the CPU must wait
    x_in = x_in.to(stage.device, non_blocking=fast).detach()
    y = y.to(stage.device, non_blocking=fast)
    if stage.reach:
        x_in.requires_grad_(True)
    out = forward_blocks(stage, x_in)
    loss = _local_loss(stage, head_logits(stage, out), y)
    loss.backward(retain_graph=stage.keep_graph)
    if stage.keep_graph:
        stage._x_in, stage._out = x_in, out
    stage._loss = loss = loss.detach()
    stage.step_count += 1
    if update:
        stage.update()
    return StepResult(out.detach(), loss, x_in.grad if stage.reach else None)


def receive_grad(stage: Stage, grad_out: torch.Tensor, n_blocks: int,
                 keep_graph: bool = True) -> torch.Tensor | None:
    """Backpropagate a later stage's message ``grad_out`` (d l / d out of this stage) through this
    stage's last ``n_blocks`` blocks, accumulating into their grads. Returns d l / d x_in when the
    message must travel further back (n_blocks > blocks in this stage), else None.
    ``keep_graph=False``: this is the stage's last message this step, its graph may be freed."""
    if stage._out is None:
        raise RuntimeError(f"stage {stage.index} received a backward message but kept no graph; "
                           f"build it with keep_graph=True (LocalNet does this from the Plan)")
    further = n_blocks > len(stage.blocks)
    targets = [p for block in stage.blocks[-n_blocks:] for p in block.parameters()]
    if further:
        targets.append(stage._x_in)
        stage._x_in.grad = None
    if targets:  # blocks without parameters (an activation) have nothing to learn
        torch.autograd.backward(stage._out, grad_out.to(stage.device), inputs=targets,
                                retain_graph=keep_graph)
    return stage._x_in.grad if further else None


@contextlib.contextmanager
def kept_buffers(*modules: nn.Module) -> Iterator[None]:
    """Restore every buffer of ``modules`` (BatchNorm running statistics) on exit: for forward
    passes that measure or recompute and must not count as seeing the data again."""
    buffers = [b for m in modules for b in m.buffers()]
    saved = [b.detach().clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved):
                buffer.copy_(value)


def receive_stale_grad(stage: Stage, grad_out: torch.Tensor, n_blocks: int,
                       x_in: torch.Tensor) -> None:
    """Apply a backward message that arrives after this stage has already updated (asynchronous
    overlap). The graph of the step it belongs to is gone (the update changed its weights in
    place), so the stage's forward is recomputed on that step's stored input ``x_in`` with the
    *current* weights, and ``grad_out`` is backpropagated through the last ``n_blocks`` blocks.
    The batch is right; the weights are newer by the message's delay: that is its staleness."""
    if not 1 <= n_blocks <= len(stage.blocks):
        raise ValueError(f"stage {stage.index}: a delayed message can reach 1 to "
                         f"{len(stage.blocks)} blocks of this stage, got {n_blocks}; the "
                         f"asynchronous runtime sends overlap messages one stage back only")
    first = len(stage.blocks) - n_blocks
    h = x_in.to(stage.device)
    targets = [p for block in stage.blocks[first:] for p in block.parameters()]
    # the stage saw this batch already: no second BatchNorm update (restored after the backward,
    # which still needs the statistics as they were in this forward)
    with kept_buffers(*stage.blocks):
        with torch.no_grad():  # blocks the message does not reach are only needed for their output
            for block in stage.blocks[:first]:
                h = block(h)
        for block in stage.blocks[first:]:
            h = block(h)
        if targets:  # blocks without parameters (an activation) have nothing to learn
            torch.autograd.backward(h, grad_out.to(stage.device), inputs=targets)


_forward_blocks, _head = forward_blocks, head_logits  # the names older code imports
