"""Cost of one stage message: the runtime's ``Links`` against a raw isend/irecv stream.

Two processes (gloo, one torch thread each). Stage 0 sends ``n`` forward messages (an activation
float32 (B, D) and its labels int64 (B,), B = 64) to stage 1, through the code the workers run
(``distributed.drive`` answering a program of Send / Recv requests with ``Links``), then through
a raw stream of the same tensors: one isend per tensor, at most ``window`` messages in flight,
``window`` receives posted ahead into fresh buffers, every request waited on. Both are timed on the
receiver, barrier to last message in; the two alternate (and swap order every round), ``repeats``
rounds after a warm-up round. Prints microseconds per message, median [min, max] over the rounds,
and the runtime / raw ratio (median of the per-round ratios). Target: ratio <= 1.3 at every size.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/messages.py              # about a minute
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/messages.py --repeats 9 --quick
"""
import argparse
import functools
import statistics
import time
from collections import deque
from datetime import timedelta

import torch
import torch.distributed as dist

from minilocal import Plan, models
from minilocal.runtime import Job, ModelSpec, RandomBatches, sgd
from minilocal.runtime.distributed import STARTUP_S, Links, Options, drive
from minilocal.runtime.launch import launch
from minilocal.runtime.program import Recv, Send

B = 64
SIZES = [16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20]  # activation bytes per message


def n_messages(size, quick):
    """Enough messages for ~10 ms of traffic at the smallest size, at least 30."""
    return max(30, (2 if quick else 4) * (8 << 20) // size)


def tensors(size):
    """One message: activation (B, size / 4B) float32, labels (B,) int64."""
    g = torch.Generator().manual_seed(size)
    return [torch.randn(B, size // (4 * B), generator=g), torch.randint(0, 10, (B,), generator=g)]


def runtime_stream(rank, parts, n, opts):
    """n messages from stage 0 to stage 1 through Links, as the workers send them (a greedy
    plan: nothing goes back); returns the seconds taken here."""
    job = Job(ModelSpec(models.mlp, {"width": 16}), Plan.greedy(2), RandomBatches(B),
              functools.partial(sgd, lr=0.1), n)
    (h, y), spec = parts, lambda t: (tuple(t.shape), t.dtype)  # noqa: E731
    specs = (spec(h), spec(h), spec(y))  # (input, output, labels) of either stage

    def program():
        for t in range(n):
            yield Send("act", (h, y), t) if rank == 0 else Recv("act", t)
    timeline = []
    dist.barrier()
    t0 = time.perf_counter()
    links = Links(rank, job, specs, opts, torch.device("cpu"), False, t0, timeline)
    drive(program(), links, None, t0, timeline)
    links.close()
    return time.perf_counter() - t0


def raw_stream(rank, parts, n, window):
    """The same tensors with bare isend/irecv; returns the seconds taken here."""
    sender, peer = rank == 0, 1 - rank
    dist.barrier()
    t0 = time.perf_counter()
    flight = deque()
    if sender:
        for _ in range(n):
            flight.append([dist.isend(t, peer) for t in parts])
            while len(flight) > window:
                for work in flight.popleft():
                    work.wait()
    else:
        posted = 0
        for _ in range(n):
            while len(flight) < window and posted < n:
                bufs = [torch.empty_like(t) for t in parts]
                flight.append(([dist.irecv(b, peer) for b in bufs], bufs))
                posted += 1
            works, _ = flight.popleft()
            for work in works:
                work.wait()
    while flight:
        for work in flight.popleft():
            work.wait()
    return time.perf_counter() - t0


def bench_worker(rank, world, sizes, repeats, quick):
    """Per round and size: the runtime stream and the raw one, in alternating order."""
    torch.set_num_threads(1)
    opts = Options("gloo", timeout=120.0, threads=1, device="cpu")
    dist.init_process_group("gloo", timeout=timedelta(seconds=STARTUP_S))
    times = {(size, kind): [] for size in sizes for kind in ("runtime", "raw")}
    for round_ in range(repeats + 1):  # round 0 warms up
        for size in sizes:
            parts, n = tensors(size), n_messages(size, quick)
            kinds = ["runtime", "raw"] if (round_ + SIZES.index(size)) % 2 else ["raw", "runtime"]
            for kind in kinds:
                if kind == "runtime":
                    s = runtime_stream(rank, parts, n, opts)
                else:
                    s = raw_stream(rank, parts, n, opts.window)
                if round_:
                    times[(size, kind)].append(s / n)
    dist.barrier()
    dist.destroy_process_group()
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (>= 5 recommended)")
    parser.add_argument("--quick", action="store_true", help="half as many messages per round")
    args = parser.parse_args()
    times = launch(bench_worker, (SIZES, args.repeats, args.quick), 2)[1]  # the receiver's clock
    print(f"messages: activation float32 (64, D) + labels int64 (64,); gloo, 2 processes x 1 "
          f"thread; window "
          f"{Options().window}; {args.repeats} rounds, median [min, max] µs per message")
    print(f"{'size':>8} {'n':>5} {'Links µs':>22} {'raw isend/irecv µs':>22} {'ratio':>18}")
    for size in SIZES:
        run, raw = times[(size, "runtime")], times[(size, "raw")]
        ratio = [a / b for a, b in zip(run, raw)]
        fmt = lambda v, f: (f"{statistics.median(v) * f:.0f} [{min(v) * f:.0f}, "  # noqa: E731
                            f"{max(v) * f:.0f}]")
        label = f"{size >> 10} KiB" if size < (1 << 20) else f"{size >> 20} MiB"
        print(f"{label:>8} {n_messages(size, args.quick):>5} {fmt(run, 1e6):>22} "
              f"{fmt(raw, 1e6):>22} {statistics.median(ratio):>6.2f} [{min(ratio):.2f}, "
              f"{max(ratio):.2f}]")


if __name__ == "__main__":
    main()
