"""Start-up cost of the distributed runtime: the spawn start method against the warm forkserver.

(a) Repeated ``run_distributed`` of a small 2-stage Job from one process (as a notebook does):
    each round runs it once under each start method, the order alternating between rounds. The
    forkserver's first call starts its server and is reported apart; the later calls reuse it.
(b) The command line ``python -m minilocal train --plan greedy --blocks 4 --steps 200 --data
    random`` (4 processes): wall time of the whole command per start method, interleaved the
    same way.
(c) Where the command's time goes: the imports every process pays for without a warm server,
    each in a fresh interpreter, interleaved.

Median [min, max] over the rounds, and the ratio of the medians (spawn / forkserver).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/startup.py            # about two minutes
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/startup.py --quick
"""
import argparse
import functools
import os
import statistics
import subprocess
import sys
import time

import torch

from minilocal import Plan, models
from minilocal.runtime import Job, ModelSpec, RandomBatches, run_distributed, sgd

METHODS = ("spawn", "forkserver")
CLI = [sys.executable, "-m", "minilocal", "train", "--plan", "greedy", "--blocks", "4",
       "--steps", "200", "--data", "random"]
IMPORTS = {"python -c pass": "pass", "import torch": "import torch",
           "torch + torch._dynamo": "import torch._dynamo",
           "the forkserver's preload": "import minilocal.runtime._warm"}


def spread(values):
    return f"{statistics.median(values):6.2f} s [{min(values):.2f}, {max(values):.2f}]"


def orders(rounds):
    """Each round runs both methods; the first of them alternates."""
    return [METHODS if i % 2 == 0 else METHODS[::-1] for i in range(rounds)]


def repeated_calls(rounds):
    job = Job(ModelSpec(models.mlp, {"width": 16}), Plan.greedy(2), RandomBatches(8),
              functools.partial(sgd, lr=0.2), 8)
    times, first = {m: [] for m in METHODS}, None
    for order in orders(rounds + 1):
        for method in order:
            os.environ["MINILOCAL_START_METHOD"] = method
            start = time.perf_counter()
            run_distributed(job, threads=1)
            took = time.perf_counter() - start
            if method == "forkserver" and first is None:
                first = took  # the server starts here
            else:
                times[method].append(took)
    times["spawn"] = times["spawn"][:rounds]
    os.environ.pop("MINILOCAL_START_METHOD")
    return times, first


def command(method, argv):
    """Wall seconds of one command, run to its end."""
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=dict(os.environ, MINILOCAL_START_METHOD=method))
    return time.perf_counter() - start


def cli(rounds):
    walls = {m: [] for m in METHODS}
    for order in orders(rounds):
        for method in order:
            walls[method].append(command(method, CLI))
    return walls


def imports(rounds):
    times = {name: [] for name in IMPORTS}
    for _ in range(rounds):
        for name, code in IMPORTS.items():
            times[name].append(command("spawn", [sys.executable, "-c", code]))
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 7")
    rounds = 3 if parser.parse_args().quick else 7
    torch.set_num_threads(1)
    print(f"{os.cpu_count()} CPUs, {rounds} rounds each, median [min, max]\n")

    times, first = repeated_calls(rounds)
    print("(a) run_distributed, 2 stages, 8 steps, repeated in one process")
    for method in METHODS:
        print(f"    {method:<10} {spread(times[method])}")
    print(f"    forkserver first call (starts the server): {first:.2f} s")
    ratio = statistics.median(times["spawn"]) / statistics.median(times["forkserver"])
    print(f"    spawn / forkserver (warm): {ratio:.1f}x\n")

    walls = cli(rounds)
    print(f"(b) {' '.join(['python', *CLI[1:]])}")
    for method in METHODS:
        print(f"    {method:<10} {spread(walls[method])}")
    ratio = statistics.median(walls["spawn"]) / statistics.median(walls["forkserver"])
    print(f"    spawn / forkserver: {ratio:.1f}x\n")

    print("(c) one fresh interpreter each (what a spawned worker pays before its first step)")
    for name, values in imports(rounds).items():
        print(f"    {name:<26} {spread(values)}")


if __name__ == "__main__":
    main()
