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
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .plan import Plan


def cross_entropy(logits, y):
    """Mean cross-entropy; logits (B, C) or (B, T, C) with y (B,) or (B, T)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def default_optimizer(params):
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

    def parameters(self):
        for module in [*self.blocks, self.head]:
            yield from module.parameters()

    def update(self):
        """Optimizer step, then clear gradients and any kept graph."""
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._x_in = self._out = None


@dataclass
class StepResult:
    x_out: torch.Tensor            # detached output of the stage's last block: the forward message
    loss: torch.Tensor             # detached scalar local loss
    grad_in: torch.Tensor = None   # d l_s / d x_in when the loss reaches back (overlap > 0)


def _forward_blocks(stage, x):
    for i, block in enumerate(stage.blocks):
        try:
            x = block(x)
        except RuntimeError as e:
            shape = tuple(x.shape)
            raise RuntimeError(f"stage {stage.index}, block {i} of the stage ({type(block).__name__}) "
                               f"failed on an input of shape {shape}, dtype {x.dtype}: {e}. Check that "
                               f"each block's output shape is the next block's input shape.") from e
    return x


def _check_labels(stage, logits, y):
    if y.dtype not in (torch.int64, torch.int32, torch.uint8, torch.int16, torch.int8):
        raise TypeError(f"stage {stage.index}: labels must be integer class indices, got dtype "
                        f"{y.dtype}; convert with y.long()")
    n_classes = logits.shape[-1]
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(f"stage {stage.index}: labels must lie in [0, {n_classes - 1}] for a head "
                         f"with {n_classes} outputs, got min {int(y.min())}, max {int(y.max())}")


def stage_step(stage, x_in, y, update=True):
    """One local step of ``stage`` on a batch. x_in: the previous stage's output (or the input).

    Accumulates gradients of the stage's loss into its blocks and head (and, through ``grad_in``,
    offers the part that belongs to earlier blocks). With ``update`` it also takes the optimizer
    step; a stage that expects a backward message must wait for it (``update=False``).
    """
    x_in = x_in.to(stage.device, non_blocking=True).detach()
    y = y.to(stage.device, non_blocking=True)
    if stage.reach:
        x_in.requires_grad_(True)
    out = _forward_blocks(stage, x_in)
    logits = stage.head(out)
    _check_labels(stage, logits, y)
    loss = stage.loss_fn(logits, y.long())
    if not math.isfinite(loss.item()):
        raise FloatingPointError(f"stage {stage.index}: local loss is {loss.item()} at step "
                                 f"{stage.step_count}; lower the learning rate or check the inputs")
    loss.backward(retain_graph=stage.keep_graph)
    if stage.keep_graph:
        stage._x_in, stage._out = x_in, out
    stage.step_count += 1
    if update:
        stage.update()
    grad_in = x_in.grad if stage.reach else None
    return StepResult(out.detach(), loss.detach(), grad_in)


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
    torch.autograd.backward(stage._out, grad_out.to(stage.device), inputs=targets, retain_graph=True)
    return stage._x_in.grad if further else None


class LocalNet(nn.Module):
    """Blocks + one head per stage + a Plan; ``local_backward`` fills .grad as the Plan says.

    blocks: list of nn.Module (L of them, chained); heads: one nn.Module per stage, head s reads the
    output of stage s's last block. ``optimizer``: a factory ``params -> torch.optim.Optimizer``,
    called once per stage. ``devices``: one device per stage (default: all on CPU).
    """

    def __init__(self, blocks, heads, plan, optimizer=default_optimizer, devices=None,
                 loss_fn=cross_entropy):
        super().__init__()
        if not isinstance(plan, Plan):
            raise TypeError(f"LocalNet: plan must be a minilocal.Plan, got {type(plan).__name__}")
        blocks, heads = list(blocks), list(heads)
        if len(blocks) != plan.n_blocks:
            raise ValueError(f"LocalNet: the plan has {plan.n_blocks} blocks but {len(blocks)} "
                             f"blocks were given; build the plan with the number of blocks")
        if len(heads) != plan.n_stages:
            raise ValueError(f"LocalNet: the plan has {plan.n_stages} stages, so it needs "
                             f"{plan.n_stages} heads (one per stage), got {len(heads)}")
        for kind, modules in (("block", blocks), ("head", heads)):
            for i, m in enumerate(modules):
                if not isinstance(m, nn.Module):
                    raise TypeError(f"LocalNet: {kind} {i} must be an nn.Module, got {type(m).__name__}")
        devices = self._check_devices(devices, plan)
        self.plan = plan
        self.blocks = nn.ModuleList(blocks)
        self.heads = nn.ModuleList(heads)
        self.stages = []
        for s, idx in enumerate(plan.stages):
            stage_blocks = [self.blocks[b] for b in idx]
            for m in [*stage_blocks, self.heads[s]]:
                m.to(devices[s])
            params = [p for m in [*stage_blocks, self.heads[s]] for p in m.parameters()]
            self.stages.append(Stage(s, stage_blocks, self.heads[s], optimizer(params),
                                     plan.reach(s), devices[s], loss_fn))
        for s in range(plan.n_stages):  # a stage keeps its graph if some later loss reaches into it
            last = plan.stages[s][-1]
            self.stages[s].keep_graph = any(plan.trained_by(t)[0] <= last
                                            for t in range(s + 1, plan.n_stages))

    @staticmethod
    def _check_devices(devices, plan):
        if devices is None:
            return [torch.device("cpu")] * plan.n_stages
        if isinstance(devices, (str, torch.device)):
            devices = [devices] * plan.n_stages
        devices = list(devices)
        if len(devices) != plan.n_stages:
            raise ValueError(f"LocalNet: devices must list one device per stage ({plan.n_stages}), "
                             f"got {len(devices)}: {devices}")
        out = []
        for d in devices:
            d = torch.device(d)
            if d.type == "cuda" and not torch.cuda.is_available():
                raise RuntimeError(f"LocalNet: device {d} was asked for but CUDA is not available on "
                                   f"this machine; use 'cpu' or minilocal.device()")
            if d.type == "cuda" and (d.index or 0) >= torch.cuda.device_count():
                raise RuntimeError(f"LocalNet: device {d} does not exist; this machine has "
                                   f"{torch.cuda.device_count()} CUDA device(s)")
            out.append(d)
        return out

    def local_backward(self, x, y):
        """Accumulate every stage's local gradients for batch (x, y); returns K loss floats.

        Like ``loss.backward()`` it adds to existing .grad (call ``zero_grad`` or ``step`` between
        batches). Synchronous: every stage sees this batch's activations from current weights.
        """
        results, h = [], x
        for stage in self.stages:
            results.append(stage_step(stage, h, y, update=False))
            h = results[-1].x_out
        for s, res in enumerate(results):  # deliver the overlap messages, hop by hop
            grad, remaining, t = res.grad_in, self.plan.reach(s), s - 1
            while remaining > 0:
                grad = receive_grad(self.stages[t], grad, remaining)
                remaining -= len(self.stages[t].blocks)
                t -= 1
        return [float(r.loss) for r in results]

    def step(self):
        """Every stage's optimizer step; clears grads and kept graphs."""
        for stage in self.stages:
            stage.update()

    def train_step(self, x, y):
        """local_backward then step: one synchronous training step. Returns K losses."""
        losses = self.local_backward(x, y)
        self.step()
        return losses

    def stage_outputs(self, x):
        """Logits of every head (list of K tensors), without gradients."""
        outs, h = [], x
        with torch.no_grad():
            for stage in self.stages:
                h = _forward_blocks(stage, h.to(stage.device))
                outs.append(stage.head(h))
        return outs

    def forward(self, x):
        """Model output: all blocks, then the output head (the last stage's)."""
        h = x
        for stage in self.stages:
            h = _forward_blocks(stage, h.to(stage.device))
        return self.stages[-1].head(h)

    def predict(self, x):
        """Class predictions from the output head, no gradients."""
        with torch.no_grad():
            return self.forward(x).argmax(dim=-1)

