"""LocalNet.train_step vs the same step written by hand in plain PyTorch (CPU).

Same MLP, same weights, same batch, same optimizer. Greedy by hand: every block's input is
``.detach()``-ed, each stage has its own head, loss and Adam. Backprop by hand: one
``nn.Sequential`` and one loss. Each round times REPEATS steps of LocalNet then of the hand loop
(interleaved, so drift in machine load hits both) in process CPU time, which a busy shared machine
disturbs far less than wall time; the table shows per-step medians and the median of the
per-round ratios. Target: LocalNet / hand <= 1.05.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/torch_step_overhead.py
"""
import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from minilocal import LocalNet, Plan, models


def build(n_blocks, width):
    return models.mlp(Plan.greedy(n_blocks), d_in=40, width=width, n_classes=10)


def adam(params):
    return torch.optim.Adam(params, lr=1e-3)


def hand_greedy(blocks, heads):
    """Greedy local updates, written the way a PyTorch user would."""
    opts = [adam([*b.parameters(), *h.parameters()]) for b, h in zip(blocks, heads)]

    def step(x, y):
        losses, h = [], x
        for block, head, opt in zip(blocks, heads, opts):
            h = block(h.detach())
            loss = F.cross_entropy(head(h), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        return losses
    return step


def hand_backprop(blocks, head):
    model = nn.Sequential(*blocks, head)
    opt = adam(model.parameters())

    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return [loss.item()]
    return step


def per_step(step, x, y, repeats):
    start = time.process_time()
    for _ in range(repeats):
        step(x, y)
    return (time.process_time() - start) / repeats


def compare(name, ours, hand, x, y, rounds, repeats):
    for _ in range(3):  # warm-up: allocator, Adam state
        ours(x, y)
        hand(x, y)
    t_ours, t_hand = [], []
    for _ in range(rounds):
        t_ours.append(per_step(ours, x, y, repeats))
        t_hand.append(per_step(hand, x, y, repeats))
    ratio = statistics.median(a / b for a, b in zip(t_ours, t_hand))
    print(f"{name:<14}{statistics.median(t_ours) * 1e6:>13.1f}{statistics.median(t_hand) * 1e6:>11.1f}"
          f"{ratio:>9.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 40, generator=gen)
    y = torch.randint(0, 10, (args.batch,), generator=gen)
    print(f"MLP {args.blocks} blocks x {args.width}, batch {args.batch}, Adam, CPU, 1 thread; "
          f"median of {args.rounds} rounds x {args.repeats} steps")
    print(f"{'method':<14}{'LocalNet us':>13}{'hand us':>11}{'ratio':>9}")
    for plan in (Plan.greedy(args.blocks), Plan.backprop(args.blocks)):
        blocks, heads = build(args.blocks, args.width)
        if plan.n_stages == 1:
            heads = heads[-1:]
        hand_blocks, hand_heads = copy.deepcopy(blocks), copy.deepcopy(heads)
        net = LocalNet(blocks, heads, plan, optimizer=adam)
        hand = (hand_greedy(hand_blocks, hand_heads) if plan.n_stages > 1
                else hand_backprop(hand_blocks, hand_heads[0]))
        compare(plan.name, net.train_step, hand, x, y, args.rounds, args.repeats)


if __name__ == "__main__":
    main()
