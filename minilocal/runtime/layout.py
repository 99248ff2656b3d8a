"""Where each rank sits on a K stages × D replicas mesh, and which rank order a run uses.

Rank order (``Layout.order``): which global rank is replica r of stage s. torchrun fills each
node with consecutive ranks (P per node), so the order decides which traffic stays on a node:

* "replicas-together" (stage-major, rank = s·D + r): a stage's D replicas are consecutive
  ranks, on one node when P is a multiple of D; the gradient all-reduce stays on the node and
  the activations cross nodes.
* "stages-together" (replica-major, rank = r·K + s): one replica's chain of K stages is
  consecutive, on one node when P is a multiple of K; the activations (and an overlapping
  plan's backward messages) stay on the node and the all-reduce crosses nodes.
* "auto" (``choose_order``): the order that keeps the heavier traffic of a step on the node.
  Per step, a ring all-reduce sends 2·(D-1)/D of a stage's gradient bytes from each of its D
  ranks: 2·(D-1)·P_s over the stage; each of the D replicas of stage s < K-1 sends its
  activation and labels to stage s+1 (and receives a backward message of the activation's size
  when s+1's loss reaches into s). Summed over the mesh (``traffic``): the all-reduce heavier or
  equal -> replicas-together, else stages-together. D = 1 or K = 1: both orders are the same.
  Bytes, not time: it assumes one link speed within nodes and another between them, whatever
  the message sizes; on a single node the order changes nothing but rank numbers.

Worked example (``tests/test_torchrun.py`` computes it): a 2-block greedy MLP, width 16, d_in 40,
10 classes, float32, batch 16 over D = 2 replicas. Stage 0 holds Dense(40 -> 16) and a head
Linear(16 -> 10): 656 + 170 = 826 parameters, 3304 bytes; stage 1, Dense(16 -> 16) + head:
272 + 170 = 442 parameters, 1768 bytes. All-reduce: 2·(2-1)·(3304 + 1768) = 10144 bytes per
step. Messages: each replica's stage 0 sends an (8, 16) float32 activation and 8 int64 labels,
512 + 64 = 576 bytes, twice (D = 2): 1152 bytes per step. The all-reduce is ~9x heavier: auto
picks replicas-together. At width 16 and batch 4096 the messages (2 x 2048 x (64 + 8) = 294912
bytes) outweigh it: auto picks stages-together. Wide layers and small batches favour
replicas-together; large batches of narrow activations favour stages-together.

The device mesh is built from the order's explicit rank table (``mesh.device_mesh``): every rank
makes the same groups in the same order, whichever the order. Everything that maps a rank to
(stage, replica) goes through ``Layout``: shards, neighbours, replica groups, names in errors,
``distributed.merge``.
"""
from dataclasses import dataclass

import torch


ORDERS = ("replicas-together", "stages-together")  # concrete rank orders; "auto" picks one


@dataclass(frozen=True)
class Layout:
    """K stages × D replicas in a rank order: "replicas-together" (rank = s·D + r) or
    "stages-together" (rank = r·K + s); see the module docstring."""
    K: int
    D: int = 1
    order: str = "replicas-together"

    def __post_init__(self):
        if self.order not in ORDERS:
            raise ValueError(f"Layout: order must be one of {ORDERS}, got {self.order!r}; "
                             f"resolve 'auto' with resolve_order first")

    @property
    def world(self):
        return self.K * self.D

    def where(self, rank):
        """(stage, replica) of a rank."""
        if not 0 <= rank < self.world:
            raise ValueError(f"Layout: rank {rank} is outside 0..{self.world - 1}")
        if self.order == "replicas-together":
            return divmod(rank, self.D)
        r, s = divmod(rank, self.K)
        return s, r

    def rank(self, s, r):
        """The global rank of replica r of stage s."""
        return s * self.D + r if self.order == "replicas-together" else r * self.K + s

    def neighbour(self, rank, hop):
        """The rank of the same replica ``hop`` stages on (-1: previous stage), or None."""
        s, r = self.where(rank)
        return self.rank(s + hop, r) if 0 <= s + hop < self.K else None

    def replica_ranks(self, s):
        """Stage s's replica group, replica 0 first."""
        return [self.rank(s, r) for r in range(self.D)]

    def table(self):
        """(K, D) ranks: row s is stage s's replica group, column r replica r's chain."""
        return [self.replica_ranks(s) for s in range(self.K)]

    def name(self, rank):
        """How errors name a rank: "stage s" when D = 1, else "stage s replica r"."""
        s, r = self.where(rank)
        return f"stage {s}" if self.D == 1 else f"stage {s} replica {r}"

    def names(self):
        return [self.name(rank) for rank in range(self.world)]


def check_replicas(where, replicas, batch_size=None):
    """``replicas`` must be a positive int that divides the batch size (when it is known)."""
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ValueError(f"{where}: replicas must be an int >= 1 (data-parallel copies of each "
                         f"stage), got {replicas!r}")
    if batch_size is not None and batch_size % replicas:
        raise ValueError(f"{where}: the batch size {batch_size} does not divide by replicas="
                         f"{replicas}; every replica needs an equal shard: use a batch size that "
                         f"is a multiple of {replicas}, or replicas that divide {batch_size}")


def shard(batch, r, D):
    """Replica r's contiguous 1/D of a batch (x (B, ...), y (B, ...)) -> (B/D, ...) each."""
    x, y = batch
    B = x.shape[0]
    check_replicas("run_distributed", D, B)
    n = B // D
    return x[r * n:(r + 1) * n], y[r * n:(r + 1) * n]


def param_bytes(modules):
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


def check_order(where, order):
    if order not in (*ORDERS, "auto"):
        raise ValueError(f"{where}: order must be 'replicas-together' (a stage's replicas on "
                         f"consecutive ranks), 'stages-together' (a replica's chain of stages on "
                         f"consecutive ranks) or 'auto' (by bytes per step), got {order!r}")


def traffic(job, D):
    """Bytes per step of ``job`` on a K × D mesh: {"reduce": per stage, the all-reduce bytes of
    its D ranks together, 2·(D-1)·P_s; "messages": per link s -> s+1, the bytes its D replicas
    send both ways (activation + labels, plus the backward message where s+1's loss reaches s)}.
    From one build of the model and a checked dry run of replica 0's shard of batch 0."""
    net = job.build(train=False)  # sizes and one dry pass: no optimizers needed
    x, y = shard(job.batches(0), 0, D)
    specs = net.check_batch(x, y)
    size = lambda spec: int(torch.Size(spec[0]).numel()) * \
        torch.empty((), dtype=spec[1]).element_size()  # noqa: E731
    labels = y.numel() * y.element_size()
    reduce = [2 * (D - 1) * param_bytes([*st.blocks, st.head]) for st in net.stages]
    back = job.receivers()
    messages = [D * (size(specs[s]) * (2 if back[s] else 1) + labels)
                for s in range(len(specs) - 1)]
    return {"reduce": reduce, "messages": messages}


def choose_order(reduce_bytes, message_bytes):
    """The rank order that keeps the heavier traffic on a node: the all-reduce bytes per step
    (summed over stages) against the message bytes per step (summed over links); ties keep
    replicas-together."""
    return "replicas-together" if sum(reduce_bytes) >= sum(message_bytes) else "stages-together"


def resolve_order(order, jobs, D):
    """A concrete order: ``order`` itself, or for "auto" the one ``choose_order`` picks from the
    jobs' bytes over their whole runs (bytes per step x steps); D = 1 or K = 1: the default."""
    check_order("run_distributed", order)
    if order != "auto":
        return order
    if D == 1 or jobs[0].plan.n_stages == 1:
        return ORDERS[0]  # one replica, or one stage: both orders number the ranks the same
    reduce, messages = 0, 0
    for job in jobs:
        t = traffic(job, D)
        reduce += sum(t["reduce"]) * job.n_steps
        messages += sum(t["messages"]) * job.n_steps
    return choose_order([reduce], [messages])
