"""LocalNet: any stack of torch blocks trained with local losses, exactly as a Plan says.

A LocalNet is K stages (``stage.py``: the stage step, the backward messages); ``train_step`` runs
them in order, delivering every message within the step. ``fast=True`` takes one optimizer step
over every stage's parameters instead of K (same updates in exact arithmetic, not bitwise: see
``LocalNet``). The stage-level names are importable from here too.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from .guards import check_batch_size, check_devices, check_finite, check_label_range, \
    check_labels, check_modules
from .plan import Plan
from .stage import (Stage, StepResult, _forward_blocks, _head, _local_loss,  # noqa: F401
                    cross_entropy, forward_blocks, head_logits, kept_buffers, receive_grad,
                    receive_stale_grad, stage_step)

# optimizers whose update of a parameter reads only that parameter's gradient and state: one
# step over all stages' parameters is K per-stage steps (fused kernels where torch has them)
PER_PARAMETER = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)


OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]  # params -> optimizer


def default_optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Adam:
    """Adam, lr 1e-3: what LocalNet gives each stage unless told otherwise."""
    return torch.optim.Adam(params, lr=1e-3)


def joint_optimizer(optimizers: Sequence[torch.optim.Optimizer]) -> torch.optim.Optimizer:
    """One optimizer of the stages' type and settings over every stage's parameters (in stage
    order): fused where torch supports it for these tensors, else multi-tensor (foreach)."""
    first = optimizers[0]
    params = [p for o in optimizers for p in o.param_groups[0]["params"]]  # no tensor in two stages
    kind = type(first)
    if kind not in PER_PARAMETER or any(type(o) is not kind or o.defaults != first.defaults
                                        or len(o.param_groups) != 1 for o in optimizers):
        got = ", ".join(f"{type(o).__name__} ({len(o.param_groups)} group(s))" for o in optimizers)
        raise ValueError(f"LocalNet(fast=True): one step over all stages needs every stage to "
                         f"get the same {' / '.join(k.__name__ for k in PER_PARAMETER)} with the "
                         f"same settings and one parameter group, got {got}; build the net "
                         f"without fast=True")
    settings = {**first.defaults, "foreach": None, "fused": True}
    try:
        return kind(params, **settings)
    except RuntimeError:  # no fused kernel for these tensors' device or dtype
        return kind(params, **{**settings, "foreach": True, "fused": None})


class LocalNet(nn.Module):
    """Blocks + one head per stage + a Plan; ``local_backward`` fills .grad as the Plan says.

    blocks: list of nn.Module (L of them, chained); heads: one nn.Module per stage, head s reads the
    output of stage s's last block. ``optimizer``: a factory ``params -> torch.optim.Optimizer``
    (or an optimizer class), called once per stage; ``None``: no optimizers, a net for evaluation
    and ``local_backward`` only (``train_step`` refuses; it builds fast, since the first optimizer
    is what imports ``torch._dynamo``). ``devices``: one device per stage, or one device for all
    (default CPU).

    ``fast=True``: every stage updates at the end of the step in one optimizer step over all
    stages' parameters (``net.optimizer``, fused or multi-tensor; stages have no optimizer of
    their own). The stages' factory must give the same Adam, AdamW or SGD to each. The updates
    are the per-stage ones in exact arithmetic (a stage's forward already used the weights of
    before the step), but the fused kernels round differently: not bitwise equal to the default,
    which the runners match bitwise. A non-finite loss stops the step before any stage updates.
    """

    def __init__(self, blocks: Iterable[nn.Module], heads: Iterable[nn.Module], plan: Plan,
                 optimizer: OptimizerFactory | None = default_optimizer,
                 devices: str | torch.device | Iterable[str | torch.device] | None = None,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy,
                 fast: bool = False) -> None:
        super().__init__()
        if not isinstance(plan, Plan):
            raise TypeError(f"LocalNet: plan must be a minilocal.Plan, got {type(plan).__name__}")
        if optimizer is not None and not callable(optimizer):
            raise TypeError(f"LocalNet: optimizer must be a factory params -> torch.optim.Optimizer, "
                            f"e.g. lambda ps: torch.optim.SGD(ps, lr=0.1), or None; "
                            f"got {optimizer!r}")
        if not isinstance(fast, bool):
            raise TypeError(f"LocalNet: fast must be True or False, got {fast!r}")
        if fast and optimizer is None:
            raise ValueError("LocalNet: fast=True steps the stages' optimizers as one, but "
                             "optimizer=None builds none; give an optimizer factory")
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
            params = list(dict.fromkeys(p for m in modules for p in m.parameters()))  # tied: once
            opt = None if optimizer is None else optimizer(params)
            if optimizer is not None and not isinstance(opt, torch.optim.Optimizer):
                raise TypeError(f"LocalNet: optimizer(params) for stage {s} returned "
                                f"{type(opt).__name__}, expected a torch.optim.Optimizer")
            self.stages.append(Stage(s, modules[:-1], modules[-1], opt, plan.reach(s), devices[s],
                                     loss_fn))
        # Stage t's graph lives until the last later stage whose loss reaches into it is done.
        self._last_user = last_user = [plan.last_user(t) for t in range(plan.n_stages)]
        for stage, last in zip(self.stages, last_user):
            stage.keep_graph = last is not None
        self._free_after = [[t for t, last in enumerate(last_user) if last == s]
                            for s in range(plan.n_stages)]
        self.optimizer = joint_optimizer([st.optimizer for st in self.stages]) if fast else None
        if fast:
            for stage in self.stages:
                stage.optimizer = None

    @property
    def fast(self) -> bool:
        """One optimizer step over all stages (``LocalNet(fast=True)``)."""
        return self.optimizer is not None

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Every optimizer of the net: one per stage, or the one of ``fast=True``."""
        if self.fast:
            return [self.optimizer]
        return [stage.optimizer for stage in self.stages if stage.optimizer is not None]

    @property
    def trainable(self) -> bool:
        """Whether the net has optimizers to train with (False when built with optimizer=None)."""
        return self.fast or any(stage.optimizer is not None for stage in self.stages)

    def _apply(self, fn, *args, **kwargs):
        """``net.to(...)``, ``.cuda()``, ``.double()`` move every module at once; afterwards each
        stage reads its device back from its tensors and its optimizer state follows them (one
        device per stage needs ``to_devices``)."""
        super()._apply(fn, *args, **kwargs)
        stages = getattr(self, "stages", [])
        for stage in stages:
            opt = stage.optimizer or self.optimizer  # None: built with optimizer=None
            held = opt and {id(p) for group in opt.param_groups for p in group["params"]}
            mine = {id(p) for p in stage.parameters()}
            if opt and ((mine != held) if stage.optimizer else not mine <= held):
                raise RuntimeError(f"LocalNet: this conversion replaced stage {stage.index}'s "
                                   f"parameters with new tensors (a move to 'meta' does), so its "
                                   f"optimizer no longer holds them; build the LocalNet with "
                                   f"devices=... instead")
            tensor = next((t for m in [*stage.blocks, stage.head]
                           for t in [*m.parameters(), *m.buffers()]), None)
            if tensor is not None:
                stage.device = tensor.device
            stage.release()
        for opt in self.optimizers if stages else []:
            opt.load_state_dict(opt.state_dict())  # casts the state onto the parameters' devices
        return self

    def to_devices(self, devices: str | torch.device | Iterable[str | torch.device] | None,
                   ) -> LocalNet:
        """Move stage s (blocks, head, optimizer state) to devices[s]; one device moves them all."""
        for stage, d in zip(self.stages, check_devices(devices, len(self.stages))):
            for m in [*stage.blocks, stage.head]:
                m.to(d)
            stage.device = d
            stage.release()
        for opt in self.optimizers:  # load_state_dict casts the state onto the (new) devices
            opt.load_state_dict(opt.state_dict())
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

    def check_batch(self, x: torch.Tensor, y: torch.Tensor,
                    labels: Iterable[tuple[str, torch.Tensor]] = (),
                    ) -> list[tuple[tuple[int, ...], torch.dtype]]:
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
                    h = forward_blocks(stage, h.to(stage.device))
                    logits = head_logits(stage, h)
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
        each = update and not self.fast  # each stage updates as soon as no later loss needs it
        losses, h = [], x  # only the losses outlive their stage: h holds one activation at a time
        for s, stage in enumerate(self.stages):
            res = stage_step(stage, h, y, update=each and not stage.keep_graph)
            grad, remaining, t = res.grad_in, stage.reach, s - 1
            while remaining > 0:  # deliver the overlap message now, hop by hop
                grad = receive_grad(self.stages[t], grad, remaining, self._last_user[t] != s)
                remaining -= len(self.stages[t].blocks)
                t -= 1
            for t in self._free_after[s]:  # no later loss needs stage t's graph any more
                self.stages[t].update() if each else self.stages[t].release()
            losses.append(res.loss)
            h = res.x_out
        losses = [float(loss) for loss in losses]
        if not all(map(math.isfinite, losses)):  # no NaN gradient may reach a later step
            for stage in self.stages:
                stage.discard()
            for stage, loss in zip(self.stages, losses):
                check_finite(stage, loss)
        if update and self.fast:
            self.step()
        return losses

    def local_backward(self, x: torch.Tensor, y: torch.Tensor) -> list[float]:
        """Accumulate every stage's local gradients for batch (x, y); returns K loss floats.

        Like ``loss.backward()`` it adds to existing .grad (call ``zero_grad`` or ``step`` between
        batches). Synchronous: every stage sees this batch's activations from current weights.
        """
        return self._run(x, y, update=False)

    def step(self) -> None:
        """Every stage's optimizer step; clears grads and kept graphs."""
        self._check_trainable("step")
        if not self.fast:
            for stage in self.stages:
                stage.update()
            return
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        for stage in self.stages:
            stage.release()
            stage._loss = None

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> list[float]:
        """One synchronous training step, equal to local_backward then step. Returns K losses.

        Each stage updates as soon as no later loss needs its graph, while its gradients are
        still in cache (as a pipeline would); a non-finite loss stops the step before its
        stage's update. With ``fast=True`` all stages update at the end, in one step.
        """
        self._check_trainable("train_step")
        return self._run(x, y, update=True)

    def _check_trainable(self, what):
        if not self.trainable:
            raise RuntimeError(f"LocalNet.{what}: this net was built with optimizer=None, for "
                               f"evaluation and local_backward only; build it with an optimizer "
                               f"factory (the default is Adam) to train")

    def _through(self, x, every_head):
        outs, h = [], x
        for stage in self.stages:
            h = forward_blocks(stage, h.to(stage.device))
            if every_head or stage is self.stages[-1]:
                outs.append(head_logits(stage, h))
        return outs

    def stage_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every head (list of K tensors), without gradients."""
        with torch.no_grad():
            return self._through(x, every_head=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Model output: all blocks, then the output head (the last stage's) only."""
        return self._through(x, every_head=False)[0]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class predictions from the output head, no gradients."""
        with torch.no_grad():
            return self.forward(x).argmax(dim=-1)
