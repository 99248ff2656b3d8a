"""LocalNet.train_step vs the same step written by hand in plain PyTorch, per method (CPU).

Same MLP, same weights, same batch, same Adam. The hand loop is what a PyTorch user would write:
each stage's input ``.detach()``-ed (``requires_grad_`` where the loss reaches back), its blocks,
its head, its loss, ``backward``; an overlap message backpropagated into the previous stage's last
block before that stage steps. Two versions of each: the default (one Adam per stage, stepped as
soon as the stage is done, as ``LocalNet()``) and the fast one (one fused Adam over every stage's
parameters, stepped once at the end, as ``LocalNet(fast=True)``). A round times ``--repeats``
steps of every runner, one after the other (interleaved, so drift in machine load hits all of
them), in process CPU time, which a busy shared machine disturbs far less than wall time. Each
row shows per-step medians and the median of the per-round ratios with their spread (min..max
over rounds). Targets: LocalNet / hand <= 1.03 per method; greedy / backprop (both LocalNet, one
device) <= 1.1 at batch 1024.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/localnet_speed.py
"""
import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from minilocal import LocalNet, Plan, models

METHODS = ("backprop", "greedy", "overlapping", "chunked(2)")


def adam(params):
    return torch.optim.Adam(params, lr=1e-3)


def hand_loop(blocks, heads, plan, fast=False):
    """The Plan's synchronous step in plain PyTorch (overlap reaching one block back at most);
    ``fast``: one fused Adam over all parameters, stepped once at the end."""
    stages = [[blocks[b] for b in idx] for idx in plan.stages]
    reach = [plan.reach(s) for s in range(plan.n_stages)]
    if fast:
        return fast_hand_loop(stages, heads, reach)
    opts = [adam([p for m in [*ms, h] for p in m.parameters()]) for ms, h in zip(stages, heads)]

    def step(x, y):
        losses, h, prev_out = [], x, None
        for s, (modules, head, opt) in enumerate(zip(stages, heads, opts)):
            x_in = h.detach().requires_grad_(reach[s] > 0)
            out = x_in
            for block in modules:
                out = block(out)
            loss = F.cross_entropy(head(out), y)
            keep = s + 1 < len(stages) and reach[s + 1] > 0
            loss.backward(retain_graph=keep)
            if reach[s]:  # the overlap message: d loss_s / d x_in into stage s-1's last block
                last = stages[s - 1][-1]
                torch.autograd.backward(prev_out, x_in.grad, inputs=list(last.parameters()))
                opts[s - 1].step()
                opts[s - 1].zero_grad(set_to_none=True)
            if not keep:
                opt.step()
                opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            h, prev_out = out, out
        return losses
    return step


def fast_hand_loop(stages, heads, reach):
    opt = torch.optim.Adam([p for ms, h in zip(stages, heads) for m in [*ms, h]
                            for p in m.parameters()], lr=1e-3, fused=True)

    def step(x, y):
        losses, h, prev_out = [], x, None
        for s, (modules, head) in enumerate(zip(stages, heads)):
            x_in = h.detach().requires_grad_(reach[s] > 0)
            out = x_in
            for block in modules:
                out = block(out)
            loss = F.cross_entropy(head(out), y)
            loss.backward(retain_graph=s + 1 < len(stages) and reach[s + 1] > 0)
            if reach[s]:
                last = stages[s - 1][-1]
                torch.autograd.backward(prev_out, x_in.grad, inputs=list(last.parameters()))
            losses.append(loss.item())
            h, prev_out = out, out
        opt.step()
        opt.zero_grad(set_to_none=True)
        return losses
    return step


def per_step(step, x, y, repeats):
    start = time.process_time()
    for _ in range(repeats):
        step(x, y)
    return (time.process_time() - start) / repeats


def runners(methods, n_blocks, width):
    """{(method, runner): step function}, every net from the same initial weights."""
    out = {}
    for method in methods:
        plan = Plan.from_spec(method, n_blocks)
        blocks, heads = models.mlp(plan, d_in=40, width=width, n_classes=10)
        for fast in (False, True):
            tag = " fast" if fast else ""
            out[(method, "hand" + tag)] = hand_loop(copy.deepcopy(blocks), copy.deepcopy(heads),
                                                    plan, fast)
            out[(method, "LocalNet" + tag)] = LocalNet(copy.deepcopy(blocks), copy.deepcopy(heads),
                                                       plan, optimizer=adam, fast=fast).train_step
    return out


def row(name, a, b):
    ratios = [x / y for x, y in zip(a, b)]
    print(f"{name:<50}{statistics.median(a) * 1e3:>10.2f}{statistics.median(b) * 1e3:>10.2f}"
          f"{statistics.median(ratios):>9.3f}   {min(ratios):.3f}..{max(ratios):.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"MLP {args.blocks} blocks x {args.width}, Adam, CPU, 1 thread; per-step ms, median of "
          f"{args.rounds} rounds x {args.repeats} steps; ratio median and min..max over rounds")
    print(f"{'comparison':<50}{'a ms':>10}{'b ms':>10}{'a / b':>9}   spread")
    for batch in args.batches:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 40, generator=gen)
        y = torch.randint(0, 10, (batch,), generator=gen)
        steps = runners(args.methods, args.blocks, args.width)
        for step in steps.values():  # warm-up: allocator, Adam state
            for _ in range(2):
                step(x, y)
        times = {key: [] for key in steps}
        for _ in range(args.rounds):
            for key, step in steps.items():
                times[key].append(per_step(step, x, y, args.repeats))
        for tag in ("", " fast"):
            for method in args.methods:
                row(f"batch {batch} {method}: LocalNet{tag} / hand{tag}",
                    times[(method, "LocalNet" + tag)], times[(method, "hand" + tag)])
            if {"greedy", "backprop"} <= set(args.methods):
                row(f"batch {batch} LocalNet{tag} greedy / backprop",
                    times[("greedy", "LocalNet" + tag)], times[("backprop", "LocalNet" + tag)])


if __name__ == "__main__":
    main()
