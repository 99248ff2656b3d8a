"""The compute-efficiency study: held-out targets, seeds, tuned learning rates, real delay.

One run trains a 1-D CNN on a large MNIST-1D (many more examples than the largest batch, so the
model does not overfit within the budget) and records the **held-out** loss of the output head at
geometrically spaced steps, until it reaches ``target`` or ``max_steps``. Every method gets the
same rule: Adam, a linear warm-up over ``warmup`` steps, the same budget (``max_steps`` steps or
``max_epochs`` passes over the data, whichever comes first), the same evaluation. Overlapping runs as the asynchronous runtime would: its backward message arrives
``delay`` steps late and is applied through a recompute of that step's forward at current
weights (``local.receive_stale_grad``; ``train_delayed`` equals the simulator bit for bit).

``tune`` finds each (method, batch)'s learning rate on seed 0 over a grid it extends until the
best value is interior (or the extension limit, which it reports); the other seeds then run at
that rate. ``noise_scale`` estimates the gradient noise scale B_simple = tr(Sigma) / |G|^2
(McCandlish et al. 2018) from gradient norms at two batch sizes, for any Plan's local gradient.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from ..local import LocalNet, receive_stale_grad, stage_step
from ..validate import check_int
from .cost import PIPELINED, Traffic, fastest_at_equal_hardware, stage_flops
from .flops import model_flops
from .sweep import config_key, eval_schedule, make_plan, sample_batches

VERSION = 1
DEFAULTS = dict(study=VERSION, dataset="mnist1d", n_samples=50000, model="cnn1d", channels=16,
                n_blocks=4, target=0.5, max_steps=4000, max_epochs=40, warmup=50, eval_ratio=1.1,
                eval_examples=2000, seed=0, device="cpu")
_DATA = {}


def config(method: str, batch: int, lr: float, seed: int = 0, **overrides: Any) -> dict[str, Any]:
    """A full run config; overlapping gets delay 1 (its message one step late), the others 0."""
    unknown = set(overrides) - set(DEFAULTS) - {"delay"}
    if unknown:
        raise ValueError(f"study.config: unknown setting(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    delay = overrides.pop("delay", 1 if method == "overlapping" else 0)
    make_plan(method, overrides.get("n_blocks", DEFAULTS["n_blocks"]))
    return dict(DEFAULTS, **overrides, method=method, batch=batch, lr=lr, seed=seed, delay=delay)


def load(c: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, y, x_heldout, y_heldout) tensors for a config, generated once per process."""
    key = (c["dataset"], c["n_samples"])
    if key not in _DATA:
        if c["dataset"] != "mnist1d":
            raise ValueError(f"study: dataset must be 'mnist1d', got {c['dataset']!r}")
        from ..data import mnist1d

        d = mnist1d(num_samples=c["n_samples"])
        _DATA[key] = tuple(torch.from_numpy(d[k]) for k in ("x", "y", "x_test", "y_test"))
    x, y, xt, yt = _DATA[key]
    n = c["eval_examples"]
    return x, y, xt[:n], yt[:n]


def build(c: dict[str, Any]) -> LocalNet:
    """The run's LocalNet: cnn1d blocks and heads under the config's seed, Adam per stage."""
    if c["model"] != "cnn1d":
        raise ValueError(f"study.build: model must be 'cnn1d', got {c['model']!r}")
    from ..models import cnn1d

    plan = make_plan(c["method"], c["n_blocks"])
    blocks, heads = cnn1d(plan, channels=c["channels"], seed=c["seed"])
    return LocalNet(blocks, heads, plan, optimizer=lambda p: torch.optim.Adam(p, lr=c["lr"]))


def train_delayed(net: LocalNet, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                  delay: int, on_step: Callable[[int], bool | None] | None = None) -> None:
    """Train ``net`` on ``batches`` (an iterable of (x, y)) with overlap messages ``delay`` >= 1
    steps late, stages in pipeline order each step; ``on_step(t)`` after every step's updates."""
    check_int("train_delayed", "delay", delay, 1, fix="for delay 0 use net.train_step")
    K, plan = len(net.stages), net.plan
    reach = plan.receivers()
    inputs, messages = [{} for _ in range(K)], [{} for _ in range(K)]
    for t, (x, y) in enumerate(batches):
        h = x
        for s, stage in enumerate(net.stages):
            if reach[s]:
                inputs[s][t] = h
            res = stage_step(stage, h, y, update=False)
            messages[s][t] = res.grad_in
            h = res.x_out
        for s, stage in enumerate(net.stages):
            if reach[s] and t >= delay:
                late = t - delay
                receive_stale_grad(stage, messages[s + 1].pop(late), reach[s], inputs[s].pop(late))
        for stage in net.stages:
            stage.update()
        if on_step is not None and on_step(t) is False:
            break


def heldout_loss(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean cross-entropy of the output head on (x, y), in eval mode, no gradients."""
    was = net.training
    net.eval()
    with torch.no_grad():
        loss = float(torch.nn.functional.cross_entropy(net(x), y))
    net.train(was)
    return loss


def budget(c: dict[str, Any], n_train: int) -> int:
    """Steps a run may take: ``max_steps``, or fewer when ``max_epochs`` passes come first."""
    return min(c["max_steps"], math.ceil(c["max_epochs"] * n_train / c["batch"]))


def run(c: dict[str, Any], return_net: bool = False,
        ) -> dict[str, Any] | tuple[dict[str, Any], LocalNet]:
    """Train one config; its record: held-out loss curve, stage FLOPs, the step it reached the
    target (None if it did not). ``return_net=True``: (record, trained net)."""
    torch.manual_seed(c["seed"])
    x, y, xt, yt = (t.to(c["device"]) for t in load(c))
    net = build(c).to_devices(c["device"])
    plan = net.plan
    work = stage_flops(plan, *model_flops(net.blocks, net.heads, plan, x[:4]))
    n_steps = budget(c, len(x))
    schedule = set(eval_schedule(n_steps, c["eval_ratio"]))
    rec = dict(config=c, steps=[0], loss=[heldout_loss(net, xt, yt)], stage_flops=work,
               n_stages=plan.n_stages, reached=None, diverged=False, budget=n_steps)
    start, sampler = time.perf_counter(), sample_batches(len(x), c["batch"], c["seed"])

    def batches():
        for t in range(n_steps):
            scale = min(1.0, (t + 1) / c["warmup"]) if c["warmup"] else 1.0
            for opt in net.optimizers:  # the stages' own, or the one fused step (fast=True)
                for group in opt.param_groups:
                    group["lr"] = c["lr"] * scale
            idx = next(sampler)
            yield x[idx], y[idx]

    def on_step(t):
        step = t + 1
        if step in schedule:
            rec["steps"].append(step)
            rec["loss"].append(heldout_loss(net, xt, yt))
            if not math.isfinite(rec["loss"][-1]):
                rec["diverged"] = True
                return False
            if rec["loss"][-1] <= c["target"]:
                rec["reached"] = step
                return False
        return True

    try:
        if c["delay"]:
            train_delayed(net, batches(), c["delay"], on_step)
        else:
            for t, (xb, yb) in enumerate(batches()):
                net.train_step(xb, yb)
                if on_step(t) is False:
                    break
    except FloatingPointError:  # a learning rate too large for this batch: the curve so far
        rec["diverged"] = True
    rec["wall_s"] = time.perf_counter() - start
    return (rec, net) if return_net else rec


def _score(rec):
    """Lower is better: reached runs by steps, the others after them by their best loss."""
    return (0, rec["reached"]) if rec["reached"] is not None else (1, min(rec["loss"]))


def next_lr(lr: float, up: bool) -> float:
    """The neighbour of ``lr`` on the 1-3-10 grid (1e-3, 3e-3, 1e-2, ...), above or below it."""
    k = math.floor(math.log10(lr) + 1e-9)
    grid = [m * 10.0 ** e for e in (k - 1, k, k + 1) for m in (1, 3)]
    return float(f"{(min(g for g in grid if g > lr * 1.01) if up else max(g for g in grid if g < lr / 1.01)):.3g}")


def tune(method: str, batch: int, run_cached: Callable[[dict[str, Any]], dict[str, Any]],
         grid: Iterable[float] = (1e-3, 3e-3, 1e-2), max_extend: int = 3,
         **overrides: Any) -> tuple[float, dict[float, dict[str, Any]], bool]:
    """Best lr for (method, batch) on seed 0: the grid, extended along the 1-3-10 grid at an edge
    that wins, up to ``max_extend`` times. Returns (best lr, {lr: record}, interior: bool)."""
    lrs = sorted(grid)
    records = {lr: run_cached(config(method, batch, lr, 0, **overrides)) for lr in lrs}
    for _ in range(max_extend):
        best = min(records, key=lambda lr: _score(records[lr]))
        if best not in (min(records), max(records)):
            break
        new = next_lr(best, up=best == max(records))
        records[new] = run_cached(config(method, batch, new, 0, **overrides))
    best = min(records, key=lambda lr: _score(records[lr]))
    return best, dict(sorted(records.items())), best not in (min(records), max(records))


def noise_scale(net: LocalNet, x: torch.Tensor, y: torch.Tensor, small: int = 32,
                big: int = 2048, repeats: int = 8, seed: int = 0) -> float:
    """B_simple = tr(Sigma) / |G|^2 of the net's local gradient (every parameter's .grad as the
    Plan fills it), from mean squared gradient norms at batch sizes ``small`` and ``big``."""
    g = torch.Generator().manual_seed(seed)

    def sq_norm(b):
        total = 0.0
        for _ in range(repeats):
            idx = torch.randint(0, len(x), (b,), generator=g)
            net.zero_grad(set_to_none=True)
            net.local_backward(x[idx], y[idx])
            total += sum(float(p.grad.pow(2).sum()) for p in net.parameters() if p.grad is not None)
        net.zero_grad(set_to_none=True)
        return total / repeats

    s_small, s_big = sq_norm(small), sq_norm(big)
    g2 = (big * s_big - small * s_small) / (big - small)       # |G|^2, unbiased
    trace = (s_small - s_big) / (1 / small - 1 / big)          # tr(Sigma)
    return trace / g2 if g2 > 0 else math.inf





def tuned_runs(payload: dict[str, Any]) -> dict[str, dict[int, dict[int, dict[str, Any]]]]:
    """{method: {batch: {seed: record}}}: the runs of a saved study at each (method, batch)'s
    tuned learning rate (``payload["summary"]["tuning"]``)."""
    by_config = {}
    for r in payload["runs"].values():
        c = r["config"]
        by_config[c["method"], c["batch"], c["lr"], c["seed"]] = r
    out = {}
    for key, verdict in payload["summary"]["tuning"].items():
        method, batch = key.split("/")
        seeds = sorted(s for (m, b, lr, s) in by_config if (m, b, lr) == (method, int(batch), verdict["lr"]))
        out.setdefault(method, {})[int(batch)] = {s: by_config[method, int(batch), verdict["lr"], s] for s in seeds}
    return out


def speedups(best: dict[str, dict[int, dict[int, dict[str, Any]]]], budgets: Iterable[int],
             pipeline_work: Sequence[float] | None, throughput: float = 1e12,
             traffic: dict[str, Traffic] | None = None,
             ) -> dict[tuple[str, int], list[float | None]]:
    """{(method, N): [speed-up over data-parallel backprop on N devices, one per seed]} at equal
    hardware: each method's fastest batch per seed (cost.fastest_at_equal_hardware), backprop
    also as GPipe/1F1B on the same N ("backprop, GPipe"). None where a method never reached the
    target with N devices. traffic: {method: cost.Traffic} adds communication (see cost.py)."""
    seeds = sorted({s for by_batch in best.values() for per_seed in by_batch.values() for s in per_seed})
    names = list(best) + [PIPELINED]
    out = {}
    for n in budgets:
        for seed in seeds:
            runs = [dict(method=m, steps=r["reached"], stage_flops=r["stage_flops"],
                         batch=r["config"]["batch"])
                    for m, by_batch in best.items() for per_seed in by_batch.values()
                    for s, r in per_seed.items() if s == seed and r["reached"]]
            fastest = fastest_at_equal_hardware(runs, n, throughput, pipeline_work, traffic)
            base = fastest.get("backprop", (None,))[0]
            for m in names:
                t = fastest.get(m, (None,))[0]
                out.setdefault((m, n), []).append(base / t if base and t else None)
    return out


__all__ = ["DEFAULTS", "build", "config", "config_key", "heldout_loss", "load", "noise_scale",
           "run", "speedups", "train_delayed", "tune", "tuned_runs"]
