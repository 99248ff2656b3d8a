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
import argparse
import atexit
import functools
import json
import math
import os
import sys

EPILOG = """launchers:
  python -m minilocal train ...                 starts one process per stage itself
  torchrun --standalone --nproc-per-node=K -m minilocal train ...
  torchrun --standalone --nproc-per-node=K*D -m minilocal train --replicas D ...
  torchrun --nnodes=N --nproc-per-node=P --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT \\
           --rdzv-id=ID -m minilocal train ...  (on every node; N x P = stages x replicas)
rank order (--rank-order; torchrun puts ranks 0..P-1 on the first node, P..2P-1 on the next):
  replicas-together  rank = s*D + r: a stage's replicas on one node (when D divides P), so the
                     gradient all-reduce stays on the node; activations cross nodes
  stages-together    rank = r*K + s: a replica's K stages on one node (when K divides P), so
                     activations and backward messages stay on the node; the all-reduce crosses
  auto               compares bytes per step: all-reduce 2*(D-1)/D x a stage's parameter bytes
                     per replica, against the activation + labels (+ backward message) each
                     replica sends on; keeps the heavier on the node. E.g. a 2-block MLP, width
                     16, batch 16, D = 2: all-reduce 10144 B vs messages 1152 B per step ->
                     replicas-together; batch 4096: 294912 B of messages -> stages-together
  Under torchrun each worker exits when its agent dies and a lost peer ends the run within
  --timeout. torchrun still decides restarts (--max-restarts) and, after its workers succeed,
  waits up to 300 s for the other nodes' agents (its exit barrier).
"""
PLANS = ("greedy", "overlapping", "chunked", "backprop")
# options that only some plans or runners read: giving them elsewhere is refused, not ignored
PLAN_ONLY = {"chunks": ("chunked",), "overlap": ("overlapping", "chunked")}
DISTRIBUTED_ONLY = ("backend", "device", "window", "timeout", "replicas", "rank_order")
LIMITS = {"blocks": (1, 64), "chunks": (1, 64), "overlap": (0, 63), "steps": (1, 10 ** 9),
          "batch_size": (1, 2 ** 16), "width": (1, 2 ** 16), "delay": (0, 10 ** 9),
          "seed": (0, 2 ** 31 - 1), "window": (1, 1024), "replicas": (1, 1024)}
MAX_LR = 10.0          # Adam diverges long before this: a larger value is a typo
MAX_TIMEOUT_S = 86400.0


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (exit code 2), pointing to --help."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.option_strings and "default" not in text and action.default is not None \
                and action.default is not argparse.SUPPRESS:
            text += " (default: %(default)s)"
        return text


def _int(name):
    low, high = LIMITS[name]

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an int in [{low}, {high}], got {text!r}") \
                from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an int in [{low}, {high}], got {value}")
        return value
    return parse


def _positive(name, high, hint):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and 0 < value <= high):
            raise argparse.ArgumentTypeError(f"must be a finite number in (0, {high:g}], got "
                                             f"{text!r}; {hint}")
        return value
    parse.__name__ = name
    return parse


def _train_parser(commands, defaults):
    def add(flag, default, **kw):
        kw.setdefault("type", _int(flag[2:].replace("-", "_")) if isinstance(default, int)
                      and "choices" not in kw else None)
        kw = {k: v for k, v in kw.items() if v is not None}
        p.add_argument(flag, default=default if defaults else argparse.SUPPRESS, **kw)

    p = commands.add_parser("train", help="train with local updates (one process per stage)",
                            epilog=EPILOG, formatter_class=Formatter, allow_abbrev=False)
    add("--plan", "greedy", choices=PLANS, help="who trains what")
    add("--blocks", 4, help="number of blocks")
    add("--chunks", 2, help="stages of a chunked plan (--plan chunked only)")
    add("--overlap", None, type=_int("overlap"),
        help="blocks before a stage that its loss also trains (--plan overlapping, default 1; "
             "--plan chunked, default 0)")
    add("--runner", "distributed", choices=["distributed", "simulator", "sequential"],
        help="how to run the stages: one process each, a simulated schedule, or in order")
    add("--steps", 200, help="training steps")
    add("--batch-size", 128, help="examples per step")
    add("--lr", 1e-3, type=_positive("lr", MAX_LR, "Adam's usual range is 1e-4 to 1e-2"),
        help="Adam learning rate")
    add("--width", 128, help="MLP width")
    add("--delay", 0, help="steps late an overlap message is applied (0 = synchronous; plans "
                           "with overlap, runner simulator or distributed)")
    add("--data", "mnist1d", choices=["mnist1d", "random"],
        help="training data: MNIST-1D (generated offline) or a random linear teacher")
    add("--seed", 0, help="seed for weights and batches")
    add("--backend", "auto", choices=["auto", "gloo", "nccl"],
        help="how stages exchange messages (--runner distributed): auto picks NCCL when every "
             "process on a node has its own GPU, else gloo; gloo sends CPU tensors (stages on GPUs "
             "stage through host memory); nccl needs one GPU per process")
    add("--device", "auto", choices=["auto", "cpu"],
        help="auto: GPUs when present; cpu: every stage on the CPU (--runner distributed)")
    add("--window", 2, help="messages in flight per link (--runner distributed)")
    add("--replicas", 1, help="data-parallel copies of each stage (--runner distributed): K "
                              "stages x D replicas = K*D processes; each replica trains on "
                              "1/D of every batch and a stage's replicas average gradients "
                              "before each update (the batch size must divide by D)")
    add("--rank-order", "replicas-together",
        choices=["replicas-together", "stages-together", "auto"],
        help="which rank is replica r of stage s, and so what torchrun keeps on one node: "
             "replicas-together (rank s*D+r: the gradient all-reduce), stages-together (rank "
             "r*K+s: the activations), auto (the heavier of the two by bytes per step; see below)")
    add("--timeout", 60.0, type=_positive("timeout", MAX_TIMEOUT_S, "give seconds, e.g. 60"),
        help="seconds a message may take before the run stops with an error naming the stage "
             "(--runner distributed)")
    add("--out", None, help="write history, test accuracy, timeline, stats and the final "
                            "weights' sha256 to this JSON file (default: none, print only)")
    return p


def _parser(defaults=True):
    parser = Parser(prog="python -m minilocal", epilog=EPILOG, description=__doc__.split("\n")[0],
                    formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)
    parser.train = _train_parser(commands, defaults)  # its prog names the command in errors
    return parser


def _explicit(argv):
    """The options given on the command line (not defaulted)."""
    return set(vars(_parser(defaults=False).parse_args(argv))) - {"command"}


def _check_applicable(args, given, under_torchrun):
    """Refuse options the chosen plan or runner would ignore; returns the overlap to use."""
    for name, plans in PLAN_ONLY.items():
        if name in given and args.plan not in plans:
            return (f"--{name} applies to --plan {' or '.join(plans)}, not --plan {args.plan}; "
                    f"drop it")
    overlap = args.overlap if args.overlap is not None else int(args.plan == "overlapping")
    if "delay" in given and (args.plan not in PLAN_ONLY["overlap"] or overlap == 0):
        return (f"--delay applies only to plans with overlap (--plan overlapping, or --plan "
                f"chunked with --overlap >= 1), not {args.plan} with overlap {overlap}; drop it")
    if args.runner == "sequential" and args.delay:
        return (f"--runner sequential is synchronous; --delay {args.delay} needs --runner "
                f"simulator or distributed")
    if args.runner != "distributed":
        for name in DISTRIBUTED_ONLY:
            if name in given:
                flag = "--" + name.replace("_", "-")
                return (f"{flag} applies to --runner distributed, not --runner {args.runner}; "
                        f"drop it")
    if under_torchrun and args.runner != "distributed":
        return "under torchrun every process is one stage: use --runner distributed"
    return overlap


def _check_out(path):
    from .data import check_writable

    try:
        check_writable(path, "--out", example="run.json")
    except OSError as e:
        return str(e)
    return None


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
