"""What every runner is given (a Job) and what every runner returns (a RunResult).

A Job must be rebuilt identically in other processes, so it holds only picklable *recipes*: a
top-level model function with its kwargs and seed, a batch source that regenerates batch t from a
seed on any rank, and an optimizer factory (a top-level function or ``functools.partial``).
"""
import dataclasses
import functools
import inspect
import os
import pickle
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from ..batches import BatchOrder
from ..local import LocalNet
from ..plan import Plan

SEED_LIMIT = 2 ** 31


EXAMPLES = {"model.fn": "e.g. minilocal.models.mlp", "model.kwargs": "plain values",
            "optimizer": "e.g. functools.partial(minilocal.runtime.adam, lr=1e-3)",
            "batches": "e.g. minilocal.runtime.RandomBatches"}


class _Discard:
    """A file that forgets what is written: pickling to it only tests that pickling works."""

    def write(self, data):
        return memoryview(data).nbytes  # large arrays arrive as a PickleBuffer, which has no len()


def check_count(where, name, value, low=1):
    """``value`` must be an int >= low (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{where}: {name} must be an int >= {low}, got {value!r}")


@dataclass(frozen=True)
class ModelSpec:
    """A recipe for ``(blocks, heads)``: ``fn(plan, **kwargs)`` run under torch seed ``seed``."""
    fn: object
    kwargs: dict = field(default_factory=dict)
    seed: int = 0

    def build(self, plan):
        with torch.random.fork_rng(devices=[]):  # the caller's random stream stays untouched
            torch.manual_seed(self.seed)
            return self.fn(plan, **self.kwargs)


@dataclass(frozen=True, eq=False)
class RandomBatches:
    """Synthetic batches: x (B, d_in) ~ N(0, 1), y (B,) = argmax of a fixed random linear map.

    Batch t depends only on (seed, t): any process, any runner, regenerates the same batch.
    """
    batch_size: int = 64
    d_in: int = 40
    n_classes: int = 10
    seed: int = 0

    def __post_init__(self):
        for name, low in (("batch_size", 1), ("d_in", 1), ("n_classes", 2), ("seed", 0)):
            check_count("RandomBatches", name, getattr(self, name), low)
        if self.seed >= SEED_LIMIT:
            raise ValueError(f"RandomBatches: seed must be < 2**31, got {self.seed}")

    def __call__(self, t):
        return self._draw(self.seed * 1_000_003 + t + 1, self.batch_size)

    def held_out(self, n=1000):
        """n examples (x (n, D), y (n,)) from the same teacher that no training step draws."""
        return self._draw(-(self.seed + 1), n)  # training steps seed with positive numbers only

    def _draw(self, stream, n):
        g = torch.Generator().manual_seed(self.seed)
        teacher = torch.randn(self.d_in, self.n_classes, generator=g)  # (D, C)
        g.manual_seed(stream)
        x = torch.randn(n, self.d_in, generator=g)                     # (B, D)
        return x, (x @ teacher).argmax(dim=1)


@dataclass(frozen=True, eq=False)
class ArrayBatches:
    """Minibatches of arrays x (N, ...) and y (N,), reshuffled each epoch from (seed, epoch)."""
    x: np.ndarray
    y: np.ndarray
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self):
        for name in ("x", "y"):
            if not isinstance(getattr(self, name), np.ndarray):
                raise TypeError(f"ArrayBatches: {name} must be a numpy array, got "
                                f"{type(getattr(self, name)).__name__}; convert with np.asarray")
        check_count("ArrayBatches", "batch_size", self.batch_size)
        if len(self.x) != len(self.y):
            raise ValueError(f"ArrayBatches: x has {len(self.x)} examples and y has {len(self.y)}; "
                             f"they must be the same number")
        if self.batch_size > len(self.x):
            raise ValueError(f"ArrayBatches: batch_size {self.batch_size} is larger than the "
                             f"{len(self.x)} examples; use a batch_size <= {len(self.x)}")
        # batch t from (seed, t) alone: every rank regenerates it (BatchOrder's per-epoch mode)
        object.__setattr__(self, "_order", BatchOrder(len(self.x), self.batch_size, self.seed,
                                                      mode="numpy-per-epoch", where="ArrayBatches"))

    def __call__(self, t):
        idx = self._order.at(t)  # a short tail is dropped: every batch is full
        return torch.from_numpy(self.x[idx]), torch.from_numpy(self.y[idx])


def mnist1d_batches(batch_size=64, seed=0):
    """MNIST-1D training set as an ArrayBatches source (generated offline, cached on disk)."""
    from ..data import mnist1d

    data = mnist1d()
    return ArrayBatches(data["x"], data["y"], batch_size, seed)


def adam(params, lr=1e-3):
    """Adam with learning rate ``lr``: a picklable optimizer factory (bind lr with partial)."""
    return torch.optim.Adam(params, lr=lr)


def sgd(params, lr=0.1):
    """Plain SGD: a picklable optimizer factory."""
    return torch.optim.SGD(params, lr=lr)


@dataclass(frozen=True, eq=False)
class Job:
    """A training run every runner can execute: model recipe, Plan, batches, optimizer, steps.

    ``delay``: how many steps late a stage applies the backward message of an overlapping loss.
    0 is synchronous (stage s waits for the message of step t before its update t). With delay d,
    update t applies the message of step t - d: the graph of that step is gone (updates changed
    its weights in place), so the stage recomputes its forward on the stored input of step t - d
    with its current weights (``local.receive_stale_grad``) and backpropagates the message through
    it. The batch matches; the weights are d updates newer than the ones the message was computed
    against: that is the staleness. Forward-only plans ignore it.
    Runners agree bitwise only for deterministic blocks: dropout draws differ between processes.
    """
    model: ModelSpec
    plan: Plan
    batches: object
    optimizer: object = functools.partial(adam, lr=1e-3)
    n_steps: int = 100
    delay: int = 0

    def __post_init__(self):
        if not isinstance(self.plan, Plan):
            raise TypeError(f"Job: plan must be a minilocal.Plan, got {type(self.plan).__name__}")
        for name, low in (("n_steps", 1), ("delay", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"Job: {name} must be an int >= {low}, got {value!r}")
        for s in range(1, self.plan.n_stages):
            if self.plan.hops(s) > 1:
                raise ValueError(f"Job: loss {s} reaches {self.plan.reach(s)} blocks back but "
                                 f"stage {s - 1} has only {len(self.plan.stages[s - 1])}; the "
                                 f"runtime sends backward messages one hop only, so use overlap "
                                 f"<= the stage size (e.g. Plan.overlapping(n, overlap=1))")
        if not isinstance(self.model, ModelSpec):
            raise TypeError(f"Job: model must be a ModelSpec(fn, kwargs, seed), got {self.model!r}")
        for name in ("batches", "optimizer"):
            if not callable(getattr(self, name)):
                raise TypeError(f"Job: {name} must be callable, got {getattr(self, name)!r}")

    def replace(self, **changes):
        """A copy with some fields changed (e.g. ``job.replace(delay=1)``)."""
        return dataclasses.replace(self, **changes)

    def build(self, devices=None, train=True):
        """A fresh LocalNet with the recipe's initial weights (identical on every rank).
        ``train=False``: without optimizers, to evaluate final weights (``RunResult.load_into``)."""
        blocks, heads = self.model.build(self.plan)
        return LocalNet(blocks, heads, self.plan, optimizer=self.optimizer if train else None,
                        devices=devices)

    def check_portable(self, where):
        """Refuse recipes that worker processes cannot rebuild: code defined in a notebook or in
        a script read from stdin, lambdas and functions nested in other functions."""
        main = sys.modules.get("__main__")
        importable = os.path.isfile(getattr(main, "__file__", None) or "")  # spawn re-imports it
        for name, obj in (("model.fn", self.model.fn), ("model.kwargs", self.model.kwargs),
                          ("optimizer", self.optimizer), ("batches", self.batches)):
            code = getattr(obj, "func", obj)  # functools.partial
            code = code if inspect.isroutine(code) or isinstance(code, type) else type(code)
            label = getattr(code, "__name__", "?")
            if getattr(code, "__module__", None) == "__main__" and not importable:
                raise ValueError(f"{where}: Job.{name} ({label!r}) is defined in this notebook "
                                 f"(or a script read from stdin), and worker processes cannot "
                                 f"import it; move it into a .py file and import it, or use "
                                 f"minilocal.models and the runtime's batch sources")
            try:
                pickle.Pickler(_Discard(), protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
            except Exception as e:  # noqa: BLE001 - every pickling failure means the same
                nested = "<" in getattr(code, "__qualname__", "")  # <lambda> or <locals>
                fix = ("a lambda or a function defined inside another function cannot be "
                       "pickled: define it with def at the top level of a module "
                       f"({EXAMPLES[name]})" if nested else "give it plain picklable values")
                raise ValueError(f"{where}: Job.{name} ({label!r}) cannot be sent to the worker "
                                 f"processes ({type(e).__name__}: {e}); {fix}") from None

    def receivers(self):
        """Per stage: how many of its blocks the next stage's loss trains (0: no message)."""
        return self.plan.receivers()


def stage_params(net, s):
    """Stage s's parameters as numpy arrays, named as in ``net.state_dict()``."""
    own = {id(p) for p in net.stages[s].parameters()}
    return {name: p.detach().cpu().numpy().copy() for name, p in net.named_parameters()
            if id(p) in own}


def stage_state(net, s):
    """Stage s's parameters and buffers (BatchNorm statistics) as numpy arrays, named as in
    ``net.state_dict()``: everything a runner hands back as the stage's final weights."""
    stage = net.stages[s]
    own = {id(t) for m in [*stage.blocks, stage.head] for t in [*m.parameters(), *m.buffers()]}
    return {name: t.detach().cpu().numpy().copy()
            for name, t in net.state_dict(keep_vars=True).items() if id(t) in own}


@dataclass
class RunResult:
    """Plain data from any runner: history, timeline, final weights (numpy) and statistics.

    history: {"step": [1..n], "train_loss": [[loss of stage 0..K-1] per step]}; timeline: a list
    of ``Event(stage, kind, t_start, t_end, step, replica)`` in seconds from the run's start,
    every process's events (with D replicas per stage, K·D rows; ``replica`` is 0 when D = 1 and
    in the single-process runners); params: name -> array as in ``LocalNet.state_dict()`` (one
    copy: a stage's replicas hold the same weights); stats: one dict per process (per stage, or
    per stage and replica in rank order); wall: seconds; grads: the first step's gradients
    (pipeline runner only).
    """
    history: dict
    timeline: list
    params: dict
    stats: list
    wall: float
    grads: dict = None

    def load_into(self, net):
        """Copy the final weights (parameters and buffers) into a LocalNet built from the same Job."""
        names = set(net.state_dict())
        missing, unexpected = sorted(names - set(self.params)), sorted(set(self.params) - names)
        if missing or unexpected:
            raise ValueError(f"RunResult.load_into: these weights do not fit this net (missing "
                             f"{missing[:4]}, unexpected {unexpected[:4]}); build the net from the "
                             f"Job that produced them (job.build())")
        net.load_state_dict({k: torch.from_numpy(v) for k, v in self.params.items()})
        return net
