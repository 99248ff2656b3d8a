"""The command line's arguments: the parser of ``python -m minilocal train``, its limits, and
the checks that refuse an option the chosen plan or runner would ignore. Free of torch, so the
command can start its worker server before torch is imported (``__main__.py`` runs the command).
"""
import argparse
import math

DESCRIPTION = ("Command line: ``python -m minilocal train ...`` trains an MLP on MNIST-1D with "
               "local updates.")

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
    parser = Parser(prog="python -m minilocal", epilog=EPILOG, description=DESCRIPTION,
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
