"""One training step of the same float32 MLP: NumPy (``local_grads`` + ``Adam.step``) vs torch.

Same weights (NumPy's ``init_mlp`` loaded into ``models.mlp``), same batch, Adam in both, CPU,
one thread. Rounds alternate the two backends and are timed in process CPU time (steadier than
wall time on a shared machine); the table shows per-step medians and the median of the per-round
ratios. Target: NumPy / torch <= 2.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/numpy_vs_torch.py
"""
import argparse
import statistics
import time

import numpy as np
import torch

from minilocal import LocalNet, Plan, models
from minilocal import numpy_core as npc


def per_step(step, repeats):
    start = time.process_time()
    for _ in range(repeats):
        step()
    return (time.process_time() - start) / repeats


def pair(plan, width, x, y):
    """(numpy_step, torch_step) over the same float32 weights."""
    params = npc.init_mlp(plan, d_in=x.shape[1], width=width, n_classes=10, seed=0, dtype=np.float32)
    net = LocalNet(*models.mlp(plan, d_in=x.shape[1], width=width), plan,
                   optimizer=lambda ps: torch.optim.Adam(ps, lr=1e-3))
    net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in params.items()})
    opt = npc.Adam(params, lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def numpy_step():
        grads, _ = npc.local_grads(params, x, y, plan)
        opt.step(grads)

    def torch_step():
        net.train_step(xt, yt)
    return numpy_step, torch_step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, 40)).astype(np.float32)
    y = rng.integers(0, 10, args.batch).astype(np.int64)
    print(f"MLP {args.blocks} blocks x {args.width}, batch {args.batch}, float32, Adam, CPU, "
          f"1 thread; median of {args.rounds} rounds x {args.repeats} steps")
    print(f"{'method':<14}{'NumPy us':>11}{'torch us':>11}{'NumPy/torch':>13}")
    plans = (Plan.backprop(args.blocks), Plan.greedy(args.blocks), Plan.overlapping(args.blocks),
             Plan.chunked(args.blocks, 2))
    for plan in plans:
        numpy_step, torch_step = pair(plan, args.width, x, y)
        for _ in range(3):
            numpy_step()
            torch_step()
        t_np, t_torch = [], []
        for _ in range(args.rounds):
            t_np.append(per_step(numpy_step, args.repeats))
            t_torch.append(per_step(torch_step, args.repeats))
        ratio = statistics.median(a / b for a, b in zip(t_np, t_torch))
        print(f"{plan.name:<14}{statistics.median(t_np) * 1e6:>11.1f}"
              f"{statistics.median(t_torch) * 1e6:>11.1f}{ratio:>13.2f}")


if __name__ == "__main__":
    main()
