"""Sweeps: methods x batch sizes x learning rates, each run to a step or target-loss budget.

A run is described by a flat, JSON-able config dict (method, model, batch, lr, budget, seed,
device, ...). Results live in one JSON file keyed by the *full* config, so a re-run computes only
the configs that are missing, and the file is rewritten atomically after every run: an
interrupted sweep resumes where it stopped and never leaves a half-written file.

A run records the output head's loss on the whole training set at geometrically spaced steps
(dense early, sparse late, so small and large batches get the same relative resolution), the
per-example work of each stage (``cost.stage_flops``), and stops at ``stop_loss`` or ``max_steps``.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..batches import BatchOrder
from ..data import atomic_write
from ..local import LocalNet
from ..plan import Plan
from ..train import evaluate
from .cost import stage_flops
from .flops import model_flops

VERSION = 1  # part of every key: bump it when a run's meaning changes, and old results go stale
DEFAULTS = dict(version=VERSION, dataset="mnist1d", model="mlp", n_blocks=4, width=128,
                optimizer="adam", max_steps=2000, stop_loss=0.1, eval_ratio=1.1, seed=0, device="cpu")


def make_plan(method: str, n_blocks: int) -> Plan:
    """Plan for a method name: backprop, greedy, overlapping (overlap 1) or chunkedK (K chunks);
    any ``Plan.from_spec`` spec works (configs cached under ``chunked2`` keep their key)."""
    return Plan.from_spec(method, n_blocks)


def sweep_configs(methods: Sequence[str], batch_sizes: Sequence[int], lrs: Sequence[float],
                  **overrides: Any) -> list[dict[str, Any]]:
    """Every (method, batch, lr) combination as a full config dict; ``overrides`` change DEFAULTS."""
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"sweep_configs: unknown setting(s) {sorted(unknown)}; "
                         f"known: {sorted(DEFAULTS)}")
    for m in methods:
        make_plan(m, overrides.get("n_blocks", DEFAULTS["n_blocks"]))
    return [dict(DEFAULTS, **overrides, method=m, batch=b, lr=lr)
            for m in methods for b in batch_sizes for lr in lrs]


def config_key(config: Mapping[str, Any]) -> str:
    """The cache key: the full config as canonical JSON."""
    return json.dumps(config, sort_keys=True)


def eval_schedule(max_steps: int, ratio: float) -> list[int]:
    """Steps at which the loss is measured: 0, then geometrically spaced by ``ratio``, and the end."""
    if ratio <= 1:
        raise ValueError(f"eval_schedule: ratio must be > 1, got {ratio!r}")
    steps, s = {0, max_steps}, 1.0
    while s < max_steps:
        steps.add(int(round(s)))
        s *= ratio
    return sorted(steps)


def sample_batches(n: int, batch: int, seed: int) -> BatchOrder:
    """Endless index batches (batch,) over n examples: shuffled epochs under a seeded torch
    generator (``BatchOrder`` in mode 'torch', the stream ``fit`` draws too)."""
    if batch > n:
        raise ValueError(f"sample_batches: batch ({batch}) is larger than the dataset ({n})")
    return BatchOrder(n, batch, seed, mode="torch", where="sample_batches")


def load_data(config: Mapping[str, Any],
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, y, x_test, y_test) tensors on the config's device."""
    if config["dataset"] != "mnist1d":
        raise ValueError(f"load_data: dataset must be 'mnist1d', got {config['dataset']!r}")
    from ..data import mnist1d

    d = mnist1d()
    return tuple(torch.from_numpy(d[k]).to(config["device"]) for k in ("x", "y", "x_test", "y_test"))


def build_net(config: Mapping[str, Any], plan: Plan, d_in: int) -> LocalNet:
    """A LocalNet for the config: the model's blocks and heads under the config's seed and lr."""
    if config["model"] != "mlp" or config["optimizer"] != "adam":
        raise ValueError(f"build_net: only model='mlp' with optimizer='adam' is wired up, got "
                         f"model={config['model']!r}, optimizer={config['optimizer']!r}")
    from ..models import mlp

    blocks, heads = mlp(plan, d_in=d_in, width=config["width"], seed=config["seed"])
    lr = config["lr"]
    return LocalNet(blocks, heads, plan, optimizer=lambda p: torch.optim.Adam(p, lr=lr),
                    devices=config["device"])


def output_loss(net: LocalNet, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean loss of the output head on (x, y): ``train.evaluate``'s (eval mode, no gradients)."""
    return evaluate(net, x, y)[0][-1]


def run_one(config: dict[str, Any]) -> dict[str, Any]:
    """Train one config; returns its record: loss curve, per-stage FLOPs, stop step, test accuracy."""
    plan = make_plan(config["method"], config["n_blocks"])
    x, y, x_test, y_test = load_data(config)
    net = build_net(config, plan, x.shape[1])
    work = stage_flops(plan, *model_flops(net.blocks, net.heads, plan, x[:4]))
    schedule = set(eval_schedule(config["max_steps"], config["eval_ratio"]))
    steps, losses, reached, diverged = [0], [output_loss(net, x, y)], None, False
    start = time.perf_counter()
    batches = sample_batches(len(x), config["batch"], config["seed"])
    for step in range(1, config["max_steps"] + 1):
        idx = next(batches).to(x.device)
        try:
            net.train_step(x[idx], y[idx])
        except FloatingPointError:  # a too-large learning rate: keep the curve so far, say so
            diverged = True
            break
        if step in schedule:
            steps.append(step)
            losses.append(output_loss(net, x, y))
            if not math.isfinite(losses[-1]):
                diverged = True
                break
            if losses[-1] <= config["stop_loss"]:
                reached = step
                break
    net.eval()
    with torch.no_grad():
        test_acc = float((net.predict(x_test) == y_test).float().mean())
    return dict(config=config, steps=steps, loss=losses, stage_flops=work, n_stages=plan.n_stages,
                reached=reached, diverged=diverged, test_acc=test_acc,
                wall_s=time.perf_counter() - start)


def load_results(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The cached results at ``path`` as {key: record}; an empty dict when the file is absent."""
    path = Path(path)
    if not path.exists():
        return {}
    with open(path) as f:
        return json.load(f)


def _save(path, results):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1)

    atomic_write(path, write)  # a reader sees the old file or the new one, never half of one


def sweep(configs: Sequence[dict[str, Any]], path: str | os.PathLike[str],
          run: Callable[[dict[str, Any]], dict[str, Any]] = run_one,
          progress: bool = True) -> dict[str, dict[str, Any]]:
    """Run every config not yet in the cache at ``path``; returns {key: record} for ``configs``.

    ``run(config) -> record`` is the work; the cache is rewritten after each run, so an
    interrupted sweep loses at most the run in flight.
    """
    path = Path(path)
    results = load_results(path)
    todo = [c for c in configs if config_key(c) not in results]
    for config in tqdm(todo, desc="sweep", disable=not progress or not todo):
        results[config_key(config)] = run(config)
        _save(path, results)
    return {config_key(c): results[config_key(c)] for c in configs}
