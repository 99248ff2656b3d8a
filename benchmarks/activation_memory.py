"""Peak activation memory of one LocalNet training step, per method, for an 8-block MLP.

CPU (always): the peak of live bytes saved for backward, counted with
``torch.autograd.graph.saved_tensors_hooks`` (each storage once; parameters excluded). A saved
tensor is live while the graph holding it is, so greedy (each stage's backward right after its
forward) should peak at about one stage, backprop at all of them. CUDA (when present): the
increase of ``torch.cuda.max_memory_allocated`` over the memory before the step. Target: greedy
<= 0.3x backprop.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/activation_memory.py
"""
import argparse
import weakref

import torch
from torch import nn

from minilocal import LocalNet, Plan


class Dense(nn.Linear):
    """relu(linear(x)): x (B, D_in) -> (B, D_out)."""

    def forward(self, x):
        return torch.relu(super().forward(x))


class _Saved:
    """What the graph holds instead of a saved tensor; freed with the graph, which we observe."""
    __slots__ = ("tensor", "__weakref__")


def peak_saved_bytes(step, params):
    """Run ``step()`` and return the peak of live bytes autograd saved for backward."""
    param_storages = {p.untyped_storage().data_ptr() for p in params}
    live, now, peak = {}, [0], [0]  # storage pointer -> [references, bytes]

    def drop(ptr):
        live[ptr][0] -= 1
        if live[ptr][0] == 0:
            now[0] -= live.pop(ptr)[1]

    def pack(t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in param_storages:
            return t
        if ptr in live:
            live[ptr][0] += 1
        else:
            live[ptr] = [1, storage.nbytes()]
            now[0] += storage.nbytes()
            peak[0] = max(peak[0], now[0])
        box = _Saved()
        box.tensor = t.detach()  # holding t itself would tie it to its grad_fn: a cycle
        weakref.finalize(box, drop, ptr)
        return box

    def unpack(packed):
        return packed.tensor if isinstance(packed, _Saved) else packed

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        step()
    return peak[0]


def peak_cuda_bytes(step, device):
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def build(plan, width, device="cpu"):
    torch.manual_seed(0)
    blocks = [Dense(40 if b == 0 else width, width) for b in range(plan.n_blocks)]
    heads = [nn.Linear(width, 10) for _ in range(plan.n_stages)]
    return LocalNet(blocks, heads, plan, devices=device)


PLANS = {"backprop": Plan.backprop, "greedy": Plan.greedy, "overlapping": Plan.overlapping,
         "chunked(2)": lambda n: Plan.chunked(n, 2), "chunked(4)": lambda n: Plan.chunked(n, 4)}


def measure(n_blocks=8, width=256, batch=1024, device="cpu"):
    """{method: peak bytes}: saved-for-backward bytes on CPU, allocator peak on CUDA."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 40, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    out = {}
    for name, make in PLANS.items():
        net = build(make(n_blocks), width, device)
        net.train_step(x, y)  # the optimizer state exists before we measure

        def step():
            net.train_step(x, y)
        if torch.device(device).type == "cuda":
            out[name] = peak_cuda_bytes(step, device)
        else:
            out[name] = peak_saved_bytes(step, list(net.parameters()))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(1)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"MLP {args.blocks} blocks x {args.width}, batch {args.batch}; one training step")
    for device in devices:
        what = "saved for backward" if device == "cpu" else "CUDA max_memory_allocated - before"
        peaks = measure(args.blocks, args.width, args.batch, device)
        print(f"\n{device}: peak bytes {what}")
        print(f"{'method':<14}{'MiB':>10}{'x backprop':>12}")
        for name, value in peaks.items():
            print(f"{name:<14}{value / 2**20:>10.2f}{value / peaks['backprop']:>12.3f}")


if __name__ == "__main__":
    main()
