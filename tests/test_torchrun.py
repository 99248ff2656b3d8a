"""Rank orders on the K × D mesh, and torchrun across two "nodes" on loopback.

Unit tests of ``Layout`` (both orders: rank <-> (stage, replica), neighbours, replica groups,
which ranks share a torchrun node) and of ``traffic``/``choose_order`` on the worked example of
``minilocal/runtime/layout.py``, by hand. Then a 2-stage × 2-replica greedy MLP trained by
``python -m minilocal train --out`` under torchrun: two agents with ``--nnodes=2
--nproc-per-node=2`` (c10d rendezvous on 127.0.0.1) and one ``--standalone --nproc-per-node=4``
agent, in both rank orders. Every worker runs one torch thread (cores // 4 = 1 on this box, and
OMP_NUM_THREADS=1), so the same arithmetic in the same order must give bitwise the same
weights on one node or two, in either order (gloo sums two replicas' buckets as a + b on both:
addition commutes bitwise): compared by the ``weights_sha256`` of ``--out``. Against the
full-batch sequential runner only float rounding separates them (tests/test_replicas.py: the
batch sum splits in two), so losses agree to RTOL 1e-5.
"""
import functools
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from minilocal.__main__ import _job, _parser
from minilocal import Plan, models
from minilocal.runtime import Job, ModelSpec, RandomBatches, run_sequential, sgd
from minilocal.runtime.layout import ORDERS, Layout, choose_order, resolve_order, traffic

ROOT = Path(__file__).resolve().parents[1]
RTOL = 1e-5  # of the sequential runner's losses; see tests/test_replicas.py
TRAIN = ["train", "--blocks", "2", "--replicas", "2", "--steps", "6", "--data", "random",
         "--width", "16", "--batch-size", "16", "--timeout", "30"]
LAUNCH_S = 240  # a torchrun run on a loaded 2-core box: agents, 4 interpreters, 6 steps


# --- Layout: rank orders by hand ---------------------------------------------------------------
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("K, D", [(1, 1), (1, 3), (3, 1), (2, 2), (3, 4)])
def test_rank_and_where_round_trip(order, K, D):
    layout = Layout(K, D, order)
    ranks = [layout.rank(s, r) for s in range(K) for r in range(D)]
    assert sorted(ranks) == list(range(K * D))
    assert all(layout.where(layout.rank(s, r)) == (s, r) for s in range(K) for r in range(D))
    assert layout.table() == [[layout.rank(s, r) for r in range(D)] for s in range(K)]


def test_the_two_orders_number_a_2x3_mesh_as_documented():
    assert Layout(2, 3, "replicas-together").table() == [[0, 1, 2], [3, 4, 5]]  # s·D + r
    assert Layout(2, 3, "stages-together").table() == [[0, 2, 4], [1, 3, 5]]    # r·K + s
    assert Layout(2, 3, "stages-together").names()[:3] == [
        "stage 0 replica 0", "stage 1 replica 0", "stage 0 replica 1"]
    assert Layout(2, 3).order == "replicas-together"  # the default: today's stage-major ranks


@pytest.mark.parametrize("order, want", [
    ("replicas-together", {0: (None, 3), 4: (1, None), 2: (None, 5)}),
    ("stages-together", {0: (None, 1), 3: (2, None), 4: (None, 5)})])
def test_neighbours_are_the_same_replica_one_stage_away(order, want):
    layout = Layout(2, 3, order)
    for rank, (before, after) in want.items():
        assert (layout.neighbour(rank, -1), layout.neighbour(rank, 1)) == (before, after)
    for rank in range(layout.world):
        s, r = layout.where(rank)
        for hop in (-1, 1):
            other = layout.neighbour(rank, hop)
            assert other is None if not 0 <= s + hop < 2 else layout.where(other) == (s + hop, r)


def test_replica_groups_and_what_a_torchrun_node_holds():
    """torchrun gives node n the ranks n·P .. n·P + P - 1: with P = D, replicas-together puts
    each stage's replica group on one node; with P = K, stages-together each replica's chain."""
    K, D = 3, 2
    together = Layout(K, D, "replicas-together")
    chains = Layout(K, D, "stages-together")
    assert together.replica_ranks(1) == [2, 3] and chains.replica_ranks(1) == [1, 4]
    assert all(len({q // D for q in together.replica_ranks(s)}) == 1 for s in range(K))
    assert all(len({chains.rank(s, r) // K for s in range(K)}) == 1 for r in range(D))
    assert len({q // K for q in chains.replica_ranks(0)}) == D  # its all-reduce spans nodes


# --- auto: bytes per step, by hand -----------------------------------------------------------
def mlp_job(plan, batch):
    return Job(ModelSpec(models.mlp, {"width": 16}), plan, RandomBatches(batch),
               functools.partial(sgd, lr=0.1), 3)


def test_traffic_of_the_worked_example_and_auto_keeps_the_all_reduce_together():
    """2 greedy blocks, d_in 40, width 16, 10 classes, float32, batch 16 over D = 2. Stage 0:
    Dense(40->16) 656 + head 170 params = 3304 B; stage 1: Dense(16->16) 272 + 170 = 1768 B;
    all-reduce 2·(D-1)·P_s per stage. Link 0->1: D x ((8, 16) float32 + 8 int64) = 2 x 576."""
    job = mlp_job(Plan.greedy(2), 16)
    t = traffic(job, 2)
    assert t == {"reduce": [2 * 3304, 2 * 1768], "messages": [2 * (8 * 16 * 4 + 8 * 8)]}
    assert sum(t["reduce"]) == 10144 and sum(t["messages"]) == 1152
    assert choose_order(t["reduce"], t["messages"]) == "replicas-together"
    assert resolve_order("auto", [job], 2) == "replicas-together"


def test_auto_keeps_the_activations_together_for_large_batches_of_narrow_layers():
    """Batch 4096: each replica sends 2048 x 16 float32 + 2048 int64 = 147456 B per step."""
    job = mlp_job(Plan.greedy(2), 4096)
    t = traffic(job, 2)
    assert t["messages"] == [294912] and sum(t["reduce"]) == 10144
    assert resolve_order("auto", [job], 2) == "stages-together"


def test_traffic_counts_the_backward_message_of_an_overlapping_plan():
    # overlapping(2): stage 1's loss reaches block 0, so link 0->1 also carries (8, 16) back
    t = traffic(mlp_job(Plan.overlapping(2), 16), 2)
    assert t["messages"] == [2 * (2 * 8 * 16 * 4 + 8 * 8)]


def test_choose_order_ties_keep_replicas_together_and_explicit_orders_stay():
    assert choose_order([100, 50], [150]) == "replicas-together"
    assert choose_order([100, 50], [151]) == "stages-together"
    job = mlp_job(Plan.greedy(2), 4096)
    assert resolve_order("replicas-together", [job], 2) == "replicas-together"
    assert resolve_order("auto", [job], 1) == "replicas-together"  # D = 1: one numbering


# --- torchrun on loopback: two nodes against one ---------------------------------------------
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp, name, nodes, order):
    """Run the training under torchrun as ``nodes`` agents (1: --standalone with 4 processes,
    2: two agents of 2 on a c10d rendezvous); returns the --out record and the seconds taken."""
    out = tmp / f"{name}.json"
    if nodes == 1:
        where = ["--standalone", "--nproc-per-node=4"]
    else:
        where = ["--nnodes=2", "--nproc-per-node=2", "--rdzv-backend=c10d",
                 f"--rdzv-endpoint=127.0.0.1:{_free_port()}", f"--rdzv-id={name}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", *where, "--max-restarts=0",
           "-m", "minilocal", *TRAIN, "--rank-order", order, "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    logs = [tmp / f"{name}.node{i}.log" for i in range(nodes)]
    start = time.monotonic()
    agents = [subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env,
                               start_new_session=True) for log in logs]
    try:
        codes = [agent.wait(timeout=LAUNCH_S) for agent in agents]
    finally:
        for agent in agents:
            if agent.poll() is None:
                os.killpg(agent.pid, 9)
                agent.wait()
    took = time.monotonic() - start
    assert codes == [0] * nodes, [log.read_text()[-3000:] for log in logs]
    return json.loads(out.read_text()), took


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{(order, nodes): (record, seconds)}; the one-node replicas-together run asks for "auto"
    (which picks replicas-together for this job: 10144 B of all-reduce vs 1152 B of messages)."""
    tmp = tmp_path_factory.mktemp("torchrun")
    out = {}
    for order in ORDERS:
        for nodes in (2, 1):
            asked = "auto" if (order, nodes) == ("replicas-together", 1) else order
            out[order, nodes] = _torchrun(tmp, f"{order}-{nodes}", nodes, asked)
    print("torchrun seconds:", {f"{o} x{n}": round(t, 1) for (o, n), (_, t) in out.items()})
    return out


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(4 * LAUNCH_S + 60)
@pytest.mark.parametrize("order", ORDERS)
def test_two_nodes_equal_one_node_bitwise(runs, order):
    two, one = runs[order, 2][0], runs[order, 1][0]
    assert two["weights_sha256"] == one["weights_sha256"]
    assert two["history"] == one["history"] and two["test_loss"] == one["test_loss"]
    assert len(two["weights_sha256"]) == 64


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(4 * LAUNCH_S + 60)
def test_both_orders_train_the_same_weights_bitwise(runs):
    hashes = {record["weights_sha256"] for record, _ in runs.values()}
    assert len(hashes) == 1, hashes


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(4 * LAUNCH_S + 60)
@pytest.mark.parametrize("order", ORDERS)
def test_ranks_sit_where_the_order_says(runs, order):
    """Every rank's own report: its stage, replica and torchrun node. Two nodes of two ranks:
    replicas-together gives each node one stage's replicas, stages-together one replica's chain."""
    layout = Layout(2, 2, order)
    for nodes in (1, 2):
        stats = runs[order, nodes][0]["stats"]
        assert [(st["stage"], st["replica"]) for st in stats] == \
            [layout.where(rank) for rank in range(4)]
        assert {st["order"] for st in stats} == {order}
    node = {(st["stage"], st["replica"]): st["node"] for st in runs[order, 2][0]["stats"]}
    assert sorted(node.values()) == [0, 0, 1, 1]
    together = [(node[0, 0], node[0, 1]), (node[1, 0], node[1, 1])] \
        if order == "replicas-together" else [(node[0, 0], node[1, 0]), (node[0, 1], node[1, 1])]
    assert all(a == b for a, b in together), node


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(4 * LAUNCH_S + 60)
def test_torchrun_runs_match_the_sequential_runner(runs):
    args = _parser().parse_args(TRAIN)
    want = run_sequential(_job(args, 0))
    for (order, nodes), (record, _) in runs.items():
        assert record["history"]["step"] == want.history["step"]
        np.testing.assert_allclose(record["history"]["train_loss"], want.history["train_loss"],
                                   rtol=RTOL, err_msg=f"{order} on {nodes} node(s)")
        first, last = record["history"]["train_loss"][0], record["history"]["train_loss"][-1]
        assert last != first  # it trained: six Adam steps moved every loss
