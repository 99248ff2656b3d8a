"""Command line: ``python -m minilocal train ...`` trains an MLP on MNIST-1D with local updates.

One process per stage, started by the command itself (``--runner distributed``, the default)::

    python -m minilocal train --plan greedy --blocks 4 --steps 500

or by torchrun, which sets the rendezvous (the command then joins it instead of starting
processes)::

    torchrun --standalone --nproc-per-node=4 -m minilocal train --plan greedy --blocks 4

Several machines: run the same torchrun line on every node with torchrun's own options; the
world size (nodes x processes per node) must equal stages x replicas::

    torchrun --nnodes=2 --nproc-per-node=2 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
             --rdzv-id=run1 -m minilocal train --plan greedy --blocks 4
    torchrun --nnodes=2 --nproc-per-node=2 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
             --rdzv-id=run2 -m minilocal train --plan greedy --blocks 2 --replicas 2 \\
             --rank-order auto

Every argument is checked before anything trains: a bad one ends the command with exit code 2 and
one line saying what to change. Timelines from different machines share no clock; compare them
within a machine only.
"""
import atexit
import functools
import json
import os
import sys

from .cli import _check_applicable, _check_out, _explicit, _parser


def _job(args, overlap):
    from . import Plan, models
    from .runtime import Job, ModelSpec, RandomBatches, adam, mnist1d_batches

    spec = {"overlapping": f"overlapping({overlap})",
            "chunked": f"chunked({args.chunks}),overlap={overlap}"}.get(args.plan, args.plan)
    plan = Plan.from_spec(spec, args.blocks)
    if args.data == "mnist1d":
        from .data import mnist1d

        n = len(mnist1d()["x"])
        if args.batch_size > n:
            raise ValueError(f"--batch-size {args.batch_size} is larger than the {n} MNIST-1D "
                             f"training examples; use at most {n}")
    batches = mnist1d_batches(args.batch_size, args.seed) if args.data == "mnist1d" else \
        RandomBatches(args.batch_size, seed=args.seed)
    model = ModelSpec(models.mlp, {"width": args.width, "seed": args.seed}, args.seed)
    return Job(model, plan, batches, functools.partial(adam, lr=args.lr), args.steps, args.delay)


def _options(args):
    """The one Options of a distributed run, from the command line."""
    from .runtime.distributed import Options

    return Options(args.backend, args.window, args.timeout, device=args.device,
                   replicas=args.replicas, order=args.rank_order)


def _check_world(args, job, under_torchrun):
    """The processes a distributed run needs exist (or can): one per stage and replica, GPUs
    for NCCL."""
    if args.runner != "distributed":
        return None
    K, D = job.plan.n_stages, args.replicas
    _options(args)  # a bad combination fails here, before any process starts
    if args.batch_size % D:
        return (f"--batch-size {args.batch_size} does not divide by --replicas {D}; every "
                f"replica needs an equal shard: use a batch size that is a multiple of {D}")
    if under_torchrun and int(os.environ["WORLD_SIZE"]) != K * D:
        layout = f"{K} stages" if D == 1 else f"{K} stages x {D} replicas"
        return (f"the plan has {layout} but torchrun started {os.environ['WORLD_SIZE']} "
                f"processes; start one per stage{' and replica' if D > 1 else ''} "
                f"(nodes x --nproc-per-node = {K * D})")
    if args.backend == "nccl":
        import torch

        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", K * D))
        if torch.cuda.device_count() < per_node:
            return (f"--backend nccl needs one GPU per process: {per_node} process(es) on this "
                    f"node but {torch.cuda.device_count()} GPU(s); use --backend auto or gloo")
    return None


def _test_set(args, job):
    """Held-out examples: MNIST-1D's test split, or fresh draws from the random teacher."""
    import torch

    if args.data == "mnist1d":
        from .data import mnist1d

        data = mnist1d()
        return torch.from_numpy(data["x_test"]), torch.from_numpy(data["y_test"]), "MNIST-1D test"
    x, y = job.batches.held_out(1000)
    return x, y, "held-out random"


def _report(args, job, result):
    from .runtime import utilization
    from .train import evaluate

    K = job.plan.n_stages
    D = getattr(args, "replicas", 1)
    order = result.stats[0].get("order") if args.runner == "distributed" and D > 1 else None
    where = (f"{K} stage(s) x {D} replica(s) = {K * D} process(es), ranks {order}" if D > 1 else
             f"{K} process(es)") if args.runner == "distributed" else f"the {args.runner} runner"
    print(f"{job.plan!r} on {where}: {job.n_steps} steps in {result.wall:.2f} s")
    x, y, name = _test_set(args, job)
    test_loss, test_acc = evaluate(result.load_into(job.build(train=False)), x, y)
    util = utilization(result.timeline, K)
    print("stage  final loss  test loss  test acc  utilization")
    for s in range(K):
        print(f"{s:>5}  {result.history['train_loss'][-1][s]:>10.4f}  {test_loss[s]:>9.4f}  "
              f"{test_acc[s]:>8.1%}  {util[s]:>11.0%}")
    print(f"test accuracy of the output head: {test_acc[-1]:.1%} on {len(y)} {name} examples")
    if args.out:
        from .data import atomic_write

        record = {"plan": repr(job.plan), "runner": args.runner, "history": result.history,
                  "test_loss": test_loss, "test_acc": test_acc,
                  "timeline": [list(e) for e in result.timeline], "stats": result.stats,
                  "wall": result.wall, "weights_sha256": weights_sha256(result.params)}

        def write(tmp):
            with open(tmp, "w") as f:
                json.dump(record, f)
        atomic_write(args.out, write)
        print(f"wrote {args.out}")


def weights_sha256(params):
    """One hash of a run's final weights (name -> array): names, dtypes, shapes and bytes, in
    name order; equal hashes mean bitwise equal weights."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(params):
        a = params[name]
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _under_torchrun():
    return "TORCHELASTIC_RUN_ID" in os.environ and "RANK" in os.environ


def train(args, job):
    """Run the Job, print a summary (rank 0 only under torchrun)."""
    from .runtime import run_distributed, run_sequential, simulate
    from .runtime.distributed import merge, torchrun_worker

    if args.runner == "sequential":
        return _report(args, job, run_sequential(job, progress=True))
    if args.runner == "simulator":
        return _report(args, job, simulate(job, "measure"))
    opts = _options(args)
    if _under_torchrun():
        parts = torchrun_worker([job], opts)
        if parts is not None:  # the order as resolved in the workers (for "auto")
            order = parts[0][0]["stats"]["order"]
            _report(args, job, merge([p[0] for p in parts], job, args.replicas, order))
        return None
    # the report evaluates a net built without optimizers (job.build(train=False)): this
    # process never imports torch._dynamo (~1 s of CPU that the workers need more)
    return _report(args, job, run_distributed(job, progress=True, options=opts))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    parser = _parser().train
    torchrun = _under_torchrun()
    overlap = _check_applicable(args, _explicit(argv), torchrun)
    if isinstance(overlap, str):
        parser.error(overlap)
    problem = args.out and _check_out(args.out)
    if problem:
        parser.error(problem)
    if args.runner == "distributed" and not torchrun:
        from .start_method import warm_up

        try:  # the forkserver imports torch while this process does the same and makes the data
            warm_up()
        except ValueError as e:  # a bad MINILOCAL_START_METHOD
            parser.error(str(e))
    try:
        job = _job(args, overlap)
        problem = _check_world(args, job, torchrun)
    except (ValueError, TypeError) as e:  # a bad combination (e.g. --chunks > --blocks)
        parser.error(str(e))
    if problem:
        parser.error(problem)
    from .runtime import WorkerError
    from .runtime.launch import PeerError

    try:
        train(args, job)
    except (WorkerError, PeerError, FloatingPointError) as e:  # PeerError: a lost torchrun peer
        sys.exit(f"python -m minilocal: {e}")
    except KeyboardInterrupt:
        sys.exit(130)


def _exit_now():
    """Flush, run the exit handlers (the forkserver stops there), then skip the interpreter's
    teardown of torch's modules, which takes about a second and does nothing a finished run
    needs."""
    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    os._exit(0)


if __name__ == "__main__":
    main()
    _exit_now()
