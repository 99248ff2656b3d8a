"""Command line: ``python -m minilocal train ...`` trains an MLP on MNIST-1D with local updates.

One process per stage, started by the command itself (``--runner distributed``, the default)::

    python -m minilocal train --plan greedy --blocks 4 --steps 500

or by torchrun, which sets the rendezvous (the command then joins it instead of spawning)::

    torchrun --standalone --nproc-per-node=4 -m minilocal train --plan greedy --blocks 4

Several machines: run the same torchrun line on every node with torchrun's own options; the
world size (nodes x processes per node) must equal the number of stages::

    torchrun --nnodes=2 --nproc-per-node=2 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
             --rdzv-id=run1 -m minilocal train --plan greedy --blocks 4

Timelines from different machines share no clock; compare them within a machine only.
"""
import argparse
import functools
import json
import os
import sys

EPILOG = """launchers:
  python -m minilocal train ...                 spawns one process per stage itself
  torchrun --standalone --nproc-per-node=K -m minilocal train ...
  torchrun --nnodes=N --nproc-per-node=P --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT \\
           --rdzv-id=ID -m minilocal train ...  (on every node; N x P = number of stages)
"""


def _parser():
    parser = argparse.ArgumentParser(prog="python -m minilocal", epilog=EPILOG,
                                     description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("train", help="train with local updates (one process per stage)",
                            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", choices=["greedy", "overlapping", "chunked", "backprop"],
                   default="greedy", help="who trains what (default: greedy)")
    p.add_argument("--blocks", type=int, default=4, help="number of blocks (default: 4)")
    p.add_argument("--chunks", type=int, default=2, help="stages of a chunked plan (default: 2)")
    p.add_argument("--overlap", type=int, default=1, help="overlap of an overlapping plan")
    p.add_argument("--runner", choices=["distributed", "simulator", "sequential"],
                   default="distributed", help="how to run the stages (default: distributed)")
    p.add_argument("--steps", type=int, default=200, help="training steps (default: 200)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size (default: 128)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    p.add_argument("--width", type=int, default=128, help="MLP width (default: 128)")
    p.add_argument("--delay", type=int, default=0,
                   help="steps late an overlap message is applied (0 = synchronous)")
    p.add_argument("--data", choices=["mnist1d", "random"], default="mnist1d",
                   help="training data (default: mnist1d, generated offline)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and batches")
    p.add_argument("--backend", choices=["auto", "gloo", "nccl"], default="auto")
    p.add_argument("--device", choices=["auto", "cpu"], default="auto",
                   help="auto: GPUs when present; cpu: every stage on the CPU")
    p.add_argument("--window", type=int, default=2, help="messages in flight per link")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a message may take")
    p.add_argument("--out", help="write history, timeline and stats to this JSON file")
    return parser


def _job(args):
    from . import Plan, models
    from .runtime import Job, ModelSpec, RandomBatches, adam, mnist1d_batches

    plan = {"greedy": lambda: Plan.greedy(args.blocks),
            "overlapping": lambda: Plan.overlapping(args.blocks, args.overlap),
            "chunked": lambda: Plan.chunked(args.blocks, args.chunks),
            "backprop": lambda: Plan.backprop(args.blocks)}[args.plan]()
    batches = mnist1d_batches(args.batch_size, args.seed) if args.data == "mnist1d" else \
        RandomBatches(args.batch_size, seed=args.seed)
    model = ModelSpec(models.mlp, {"width": args.width, "seed": args.seed}, args.seed)
    return Job(model, plan, batches, functools.partial(adam, lr=args.lr), args.steps, args.delay)


def _report(args, job, result):
    from .runtime import utilization

    K = job.plan.n_stages
    where = f"{K} process(es)" if args.runner == "distributed" else f"the {args.runner} runner"
    print(f"{job.plan!r} on {where}: {job.n_steps} steps in {result.wall:.2f} s")
    util = utilization(result.timeline, K)
    print("stage  final loss  utilization")
    for s in range(K):
        print(f"{s:>5}  {result.history['train_loss'][-1][s]:>10.4f}  {util[s]:>11.0%}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"plan": repr(job.plan), "runner": args.runner, "history": result.history,
                       "timeline": [list(e) for e in result.timeline], "stats": result.stats,
                       "wall": result.wall}, f)
        print(f"wrote {args.out}")


def _under_torchrun():
    return "TORCHELASTIC_RUN_ID" in os.environ and "RANK" in os.environ


def train(args, job):
    """Run the Job, print a summary (rank 0 only under torchrun)."""
    from .runtime import run_distributed, run_sequential, simulate
    from .runtime.distributed import Options, merge, worker

    if args.runner == "sequential":
        return _report(args, job, run_sequential(job, progress=True))
    if args.runner == "simulator":
        return _report(args, job, simulate(job, "measure"))
    if _under_torchrun():
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        opts = Options(args.backend, args.window, args.timeout, device=args.device)
        parts = worker(rank, world, [job], opts, gather=True)
        if rank == 0:
            _report(args, job, merge([p[0] for p in parts], job))
        return None
    return _report(args, job, run_distributed(job, args.backend, args.window, args.timeout,
                                              device=args.device))


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    for name in ("blocks", "steps", "batch_size", "width", "window"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    try:
        job = _job(args)
    except (ValueError, TypeError) as e:  # a bad combination (e.g. --chunks > --blocks)
        parser.error(str(e))
    if args.runner == "sequential" and args.delay:
        parser.error(f"--runner sequential is synchronous; --delay {args.delay} needs --runner "
                     f"simulator or distributed")
    from .runtime import WorkerError

    try:
        train(args, job)
    except WorkerError as e:
        sys.exit(f"python -m minilocal: {e}")
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
