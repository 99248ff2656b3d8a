"""LocalNet: any stack of torch blocks trained with local losses, exactly as a Plan says.

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
A message that has to go further back than one stage continues hop by hop.
"""
import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .guards import (block_failure, check_batch_size, check_devices, check_finite, check_input,
                     check_label_range, check_labels, check_modules, check_targets,
                     check_token_ids, dtype_name)
from .plan import Plan


def cross_entropy(logits, y):
    """Mean cross-entropy; logits (B, C) or (B, T, C) with integer y (B,) or (B, T)."""
    if logits.ndim > 2:
        logits, y = logits.reshape(-1, logits.shape[-1]), y.reshape(-1)  # (B*T, C), (B*T,)
    if y.dtype != torch.int64 and not y.is_floating_point():
        y = y.long()  # F.cross_entropy takes only int64 class indices; floats are refused below
    return F.cross_entropy(logits, y)


def default_optimizer(params):
    """Adam, lr 1e-3: what LocalNet gives each stage unless told otherwise."""
    return torch.optim.Adam(params, lr=1e-3)


@dataclass
class Stage:
    """What one stage owns: its blocks, its head, its optimizer and where they live."""
    index: int
    blocks: list
    head: nn.Module
    optimizer: torch.optim.Optimizer
    reach: int = 0                     # blocks of earlier stages that this stage's loss trains
    device: torch.device = torch.device("cpu")
    loss_fn: object = cross_entropy
    keep_graph: bool = False           # a later stage will send a backward message here
    step_count: int = 0
    _x_in: torch.Tensor = None         # graph kept for the message (only when keep_graph)
    _out: torch.Tensor = None
    _loss: torch.Tensor = None         # last local loss, checked before the update

    def parameters(self):
        for module in [*self.blocks, self.head]:
            yield from module.parameters()

    @property
    def dtype(self):
        """The floating dtype of the stage's parameters (None if it has none)."""
        return None if self._probe is None else self._probe.dtype

    def __post_init__(self):
        # Parameters keep their identity through .to()/.double(), so this one tells the live dtype.
        self._probe = next((p for p in self.parameters() if p.is_floating_point()), None)

    def release(self):
        """Drop the graph kept for backward messages (frees its saved activations)."""
        self._x_in = self._out = None

    def update(self):
        """Optimizer step, then clear gradients and any kept graph. Refuses a non-finite loss
        (and discards that step's gradients, so they cannot poison the next one)."""
        if self._loss is not None and not math.isfinite(float(self._loss)):
            loss = float(self._loss)
            self.discard()
            check_finite(self, loss)
        self.optimizer.step()
        self.discard()

    def discard(self):
        """Drop this step's gradients, kept graph and loss without updating."""
        self.optimizer.zero_grad(set_to_none=True)
        self.release()
        self._loss = None


@dataclass
class StepResult:
    x_out: torch.Tensor            # detached output of the stage's last block: the forward message
    loss: torch.Tensor             # detached scalar local loss
    grad_in: torch.Tensor = None   # d l_s / d x_in when the loss reaches back (overlap > 0)


def _forward_blocks(stage, x):
    check_input(stage, x)
    for i, block in enumerate(stage.blocks):
        if stage.device.type == "cuda" and not x.is_floating_point():
            check_token_ids(stage, i, block, x)  # on a GPU a bad id is an unrecoverable assert
        try:
            x = block(x)
        except (RuntimeError, IndexError) as e:  # on CPU, explain only when it fails: no cost
            raise block_failure(stage, i, block, x, e) from e
    return x


def _head(stage, h):
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


def stage_step(stage, x_in, y, update=True):
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
    out = _forward_blocks(stage, x_in)
    loss = _local_loss(stage, _head(stage, out), y)
    loss.backward(retain_graph=stage.keep_graph)
    if stage.keep_graph:
        stage._x_in, stage._out = x_in, out
    stage._loss = loss = loss.detach()
    stage.step_count += 1
    if update:
        stage.update()
    return StepResult(out.detach(), loss, x_in.grad if stage.reach else None)


def receive_grad(stage, grad_out, n_blocks):
    """Backpropagate a later stage's message ``grad_out`` (d l / d out of this stage) through this
    stage's last ``n_blocks`` blocks, accumulating into their grads. Returns d l / d x_in when the
    message must travel further back (n_blocks > blocks in this stage), else None."""
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
                                retain_graph=True)
    return stage._x_in.grad if further else None


@contextlib.contextmanager
def kept_buffers(*modules):
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


def receive_stale_grad(stage, grad_out, n_blocks, x_in):
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


class LocalNet(nn.Module):
    """Blocks + one head per stage + a Plan; ``local_backward`` fills .grad as the Plan says.

    blocks: list of nn.Module (L of them, chained); heads: one nn.Module per stage, head s reads the
    output of stage s's last block. ``optimizer``: a factory ``params -> torch.optim.Optimizer``
    (or an optimizer class), called once per stage. ``devices``: one device per stage, or one
    device for all (default CPU).
    """

    def __init__(self, blocks, heads, plan, optimizer=default_optimizer, devices=None,
                 loss_fn=cross_entropy):
        super().__init__()
        if not isinstance(plan, Plan):
            raise TypeError(f"LocalNet: plan must be a minilocal.Plan, got {type(plan).__name__}")
        if not callable(optimizer):
            raise TypeError(f"LocalNet: optimizer must be a factory params -> torch.optim.Optimizer, "
                            f"e.g. lambda ps: torch.optim.SGD(ps, lr=0.1); got {optimizer!r}")
        blocks, heads = list(blocks), list(heads)
        check_modules(blocks, heads, plan)
        devices = check_devices(devices, plan.n_stages)
        self.plan = plan
        self.blocks = nn.ModuleList(blocks)
        self.heads = nn.ModuleList(heads)
        self.stages = []
        for s, idx in enumerate(plan.stages):
            modules = [*(self.blocks[b] for b in idx), self.heads[s]]
            for m in modules:
                m.to(devices[s])
            opt = optimizer(list(dict.fromkeys(p for m in modules for p in m.parameters())))  # tied: once
            if not isinstance(opt, torch.optim.Optimizer):
                raise TypeError(f"LocalNet: optimizer(params) for stage {s} returned "
                                f"{type(opt).__name__}, expected a torch.optim.Optimizer")
            self.stages.append(Stage(s, modules[:-1], modules[-1], opt, plan.reach(s), devices[s],
                                     loss_fn))
        # Stage t's graph lives until the last later stage whose loss reaches into it is done.
        last_user = [plan.last_user(t) for t in range(plan.n_stages)]
        for stage, last in zip(self.stages, last_user):
            stage.keep_graph = last is not None
        self._free_after = [[t for t, last in enumerate(last_user) if last == s]
                            for s in range(plan.n_stages)]

    def _apply(self, fn, *args, **kwargs):
        """``net.to(...)``, ``.cuda()``, ``.double()`` move every module at once; afterwards each
        stage reads its device back from its tensors and its optimizer state follows them (one
        device per stage needs ``to_devices``)."""
        super()._apply(fn, *args, **kwargs)
        for stage in getattr(self, "stages", []):
            held = {id(p) for group in stage.optimizer.param_groups for p in group["params"]}
            if held != {id(p) for p in stage.parameters()}:
                raise RuntimeError(f"LocalNet: this conversion replaced stage {stage.index}'s "
                                   f"parameters with new tensors (a move to 'meta' does), so its "
                                   f"optimizer no longer holds them; build the LocalNet with "
                                   f"devices=... instead")
            tensor = next((t for m in [*stage.blocks, stage.head]
                           for t in [*m.parameters(), *m.buffers()]), None)
            if tensor is not None:
                stage.device = tensor.device
            stage.release()
            stage.optimizer.load_state_dict(stage.optimizer.state_dict())
        return self

    def to_devices(self, devices):
        """Move stage s (blocks, head, optimizer state) to devices[s]; one device moves them all."""
        for stage, d in zip(self.stages, check_devices(devices, len(self.stages))):
            for m in [*stage.blocks, stage.head]:
                m.to(d)
            stage.device = d
            stage.release()
            # load_state_dict casts optimizer state onto each parameter's (new) device
            stage.optimizer.load_state_dict(stage.optimizer.state_dict())
        return self

    @staticmethod
    def _check_pair(x, y):
        for name, t in (("x", x), ("y", y)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"LocalNet: {name} must be a torch.Tensor, got "
                                f"{type(t).__name__}; convert with torch.as_tensor({name})")
        check_batch_size("LocalNet", x)
        if y.ndim == 0 or x.shape[0] != y.shape[0]:
            raise ValueError(f"LocalNet: x has {x.shape[0]} examples but y has "
                             f"{y.shape[0] if y.ndim else 'none (a scalar)'}; they must match "
                             f"(x: {tuple(x.shape)}, y: {tuple(y.shape)})")

    def check_batch(self, x, y, labels=()):
        """Run the batch (x, y) through every stage and head as a training step would, with the
        same checks (counts, dtypes, shapes, label range), but without gradients and without
        changing the net. ``labels``: more (name, tensor) pairs to check the range of (a whole
        data set's labels). Returns every stage's output as (shape, dtype)."""
        self._check_pair(x, y)
        was_training, specs, h = self.training, [], x
        self.eval()  # no BatchNorm statistics change, no dropout draw
        try:
            with torch.no_grad():
                for stage in self.stages:
                    h = _forward_blocks(stage, h.to(stage.device))
                    logits = _head(stage, h)
                    if stage.loss_fn is cross_entropy:
                        check_labels(stage, logits, y.to(stage.device))
                        for name, more in labels:
                            check_label_range(stage, logits.shape[-1], more, name)
                    specs.append((tuple(h.shape), h.dtype))
        finally:
            self.train(was_training)
        return specs

    def _run(self, x, y, update):
        """One synchronous step, stages in order. This loop is the readable version of the stage
        program (``runtime.program``), kept because it also serves ``local_backward`` (no update)
        and delivers messages more than one stage back; tests/test_runtime.py holds it bitwise
        equal to ``run_sequential``, which drives the program itself."""
        self._check_pair(x, y)
        losses, h = [], x  # only the losses outlive their stage: h holds one activation at a time
        for s, stage in enumerate(self.stages):
            res = stage_step(stage, h, y, update=update and not stage.keep_graph)
            grad, remaining, t = res.grad_in, stage.reach, s - 1
            while remaining > 0:  # deliver the overlap message now, hop by hop
                grad = receive_grad(self.stages[t], grad, remaining)
                remaining -= len(self.stages[t].blocks)
                t -= 1
            for t in self._free_after[s]:  # no later loss needs stage t's graph any more
                self.stages[t].update() if update else self.stages[t].release()
            losses.append(res.loss)
            h = res.x_out
        losses = [float(loss) for loss in losses]
        if not all(map(math.isfinite, losses)):  # no NaN gradient may reach a later step
            for stage in self.stages:
                stage.discard()
            for stage, loss in zip(self.stages, losses):
                check_finite(stage, loss)
        return losses

    def local_backward(self, x, y):
        """Accumulate every stage's local gradients for batch (x, y); returns K loss floats.

        Like ``loss.backward()`` it adds to existing .grad (call ``zero_grad`` or ``step`` between
        batches). Synchronous: every stage sees this batch's activations from current weights.
        """
        return self._run(x, y, update=False)

    def step(self):
        """Every stage's optimizer step; clears grads and kept graphs."""
        for stage in self.stages:
            stage.update()

    def train_step(self, x, y):
        """One synchronous training step, equal to local_backward then step. Returns K losses.

        Each stage updates as soon as no later loss needs its graph, while its gradients are
        still in cache (as a pipeline would); a non-finite loss stops the step before its
        stage's update.
        """
        return self._run(x, y, update=True)

    def _through(self, x, every_head):
        outs, h = [], x
        for stage in self.stages:
            h = _forward_blocks(stage, h.to(stage.device))
            if every_head or stage is self.stages[-1]:
                outs.append(_head(stage, h))
        return outs

    def stage_outputs(self, x):
        """Logits of every head (list of K tensors), without gradients."""
        with torch.no_grad():
            return self._through(x, every_head=True)

    def forward(self, x):
        """Model output: all blocks, then the output head (the last stage's) only."""
        return self._through(x, every_head=False)[0]

    def predict(self, x):
        """Class predictions from the output head, no gradients."""
        with torch.no_grad():
            return self.forward(x).argmax(dim=-1)
