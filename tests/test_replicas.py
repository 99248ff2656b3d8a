"""K stages × D data-parallel replicas on gloo: equal to the sequential runner on the full batch
(up to float rounding), the delayed-overlap path equal to the simulator, each rank holding only
its own stage, and faults of one replica that stop every rank with an error naming it.

Why a tolerance and not bitwise: replica r computes the mean gradient of its shard, and the
replicas average those; the full batch sums all B examples in one pass. The sums are the same
numbers added in another order (the matmul over the batch splits in two), so each step's
gradients differ by a few float32 ulps (measured: relative 1e-7 per step, 1.2e-7 on the weights
after 8 SGD steps). We allow 1e-5 of each tensor's largest entry: ~100x what rounding gives,
while the wrong answers (summing instead of averaging, or each replica keeping its own shard's
gradient) miss by ~1e-1, as the test checks. What holds bitwise: every replica of a stage ends
with the same weights and losses (gloo adds in one order on every rank; ``merge`` refuses
otherwise) and D = 1 equals the sequential runner (tests/test_distributed.py).
"""
import functools
import re
import time
from dataclasses import dataclass

import matplotlib
import numpy as np
import pytest
import torch

from minilocal import Plan, models
from minilocal.local import cross_entropy
from minilocal.runtime import (Event, Job, ModelSpec, Options, RandomBatches, WorkerError,
                               pipeline_model, plot_timelines, rank_utilization, run_distributed,
                               run_pipeline, run_sequential, sgd, simulate)
from minilocal.runtime.distributed import merge
from test_distributed import FaultyBatches, spawned_children  # the single-replica fault tests' helpers

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(180)]
torch.set_num_threads(1)
matplotlib.use("Agg")
MESH_2X2 = [(0, 0), (0, 1), (1, 0), (1, 1)]
RTOL = 1e-5  # of each tensor's largest entry; see the module docstring


def make_job(plan, n_steps=8, delay=0, batches=None, lr=0.2):
    return Job(ModelSpec(models.mlp, {"width": 16}), plan, batches or RandomBatches(8),
               functools.partial(sgd, lr=lr), n_steps, delay)


def distance(got, want):
    """Largest |got - want| of any tensor, relative to that tensor's largest |want|."""
    assert got.params.keys() == want.params.keys()
    return max(float(np.abs(got.params[k] - want.params[k]).max() / np.abs(want.params[k]).max())
               for k in want.params)


def assert_close_run(got, want):
    assert got.history["step"] == want.history["step"]
    np.testing.assert_allclose(got.history["train_loss"], want.history["train_loss"], rtol=RTOL)
    assert distance(got, want) < RTOL


@dataclass(frozen=True, eq=False)
class FirstHalf(RandomBatches):
    """The first half of each RandomBatches batch: what replica 0 trains on if nobody averages."""

    def __call__(self, t):
        x, y = RandomBatches(self.batch_size, self.d_in, self.n_classes, self.seed)(t)
        return x[:self.batch_size // 2], y[:self.batch_size // 2]


def test_two_stages_by_two_replicas_equal_sequential_and_simulator():
    jobs = [make_job(Plan.greedy(2)), make_job(Plan.chunked(4, 2)), make_job(Plan.overlapping(2)),
            make_job(Plan.overlapping(2), delay=1)]
    runs = run_distributed(jobs, timeout=60, threads=1, replicas=2)
    for run, job in zip(runs[:3], jobs):
        assert_close_run(run, run_sequential(job))
    assert_close_run(runs[3], simulate(jobs[3], [1, 1]))     # delayed overlap: same semantics
    greedy, _, overlap, _ = runs
    # the layout: 4 ranks, stage-major; replica r of stage s talks to replica r of s+1 only
    assert [(s["stage"], s["replica"]) for s in greedy.stats] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [s["sent_act"] for s in greedy.stats] == [8, 8, 0, 0]
    assert [s["sent_grad"] for s in greedy.stats] == [0, 0, 0, 0]
    assert [s["sent_grad"] for s in overlap.stats] == [0, 0, 8, 8]
    assert all(s["n_reduce"] == 8 for s in overlap.stats)  # one average per step and stage
    # every rank is on the timeline: one row per (stage, replica), each with all of its steps
    for run in runs:
        assert sorted({(e.stage, e.replica) for e in run.timeline}) == MESH_2X2
        for row in MESH_2X2:
            kinds = [e.kind for e in run.timeline if (e.stage, e.replica) == row]
            assert kinds.count("update") == kinds.count("reduce") == 8, row
    assert sum(e.kind == "recv" and e.stage == 1 for e in greedy.timeline) == 2 * 8  # both replicas
    assert list(rank_utilization(greedy.timeline)) == MESH_2X2
    assert all(0 < u <= 1 for u in rank_utilization(greedy.timeline).values())
    _, axes = plot_timelines({"greedy 2 x 2": greedy.timeline, "overlapping 2 x 2": overlap.timeline})
    assert [len(ax.get_yticks()) for ax in axes] == [4, 4]
    assert [t.get_text() for t in axes[0].get_yticklabels()] == ["s0 r0", "s0 r1", "s1 r0", "s1 r1"]
    matplotlib.pyplot.close("all")
    # each rank holds only its own stage: the stages' parameters add up to the model's
    for run in runs[:2]:
        model = run.stats[0]["model_param_bytes"]
        assert sum(s["param_bytes"] for s in run.stats[::2]) == model
        assert all(s["param_bytes"] < model for s in run.stats)
    # the tolerance tells the right answer from the wrong ones
    want = run_sequential(jobs[0])
    assert distance(run_sequential(make_job(Plan.greedy(2), lr=0.4)), want) > 1e3 * RTOL  # sum
    assert distance(run_sequential(make_job(Plan.greedy(2), batches=FirstHalf(8))),
                    want) > 1e3 * RTOL                                       # no average


def test_data_parallel_backprop_on_four_replicas_equals_sequential():
    job = make_job(Plan.backprop(3))
    run = run_distributed(job, options=Options(timeout=60, threads=1, replicas=4))
    assert_close_run(run, run_sequential(job))
    assert [s["replica"] for s in run.stats] == [0, 1, 2, 3]
    assert sorted({(e.stage, e.replica) for e in run.timeline}) == [(0, r) for r in range(4)]
    assert all(s["sent_act"] == 0 and s["n_reduce"] == 8 for s in run.stats)


def test_pipelined_backprop_on_two_replicas_equals_full_batch_backprop():
    job = make_job(Plan.greedy(2), n_steps=2)
    runs = run_pipeline(job, ["gpipe", "1f1b"], n_microbatches=2,  # the settings as one object
                        options=Options(timeout=60, threads=1, replicas=2))
    full = torch.nn.Sequential(*pipeline_model(job))
    x, y = job.batches(0)
    cross_entropy(full(x), y).backward()
    for name, run in runs.items():
        assert run.grads.keys() == dict(full.named_parameters()).keys(), name
        for k, p in full.named_parameters():
            want = p.grad.numpy()
            assert np.abs(run.grads[k] - want).max() < RTOL * np.abs(want).max(), (name, k)
    np.testing.assert_allclose(runs["gpipe"].history["train_loss"],
                               runs["1f1b"].history["train_loss"], rtol=RTOL)
    for run in runs.values():  # every rank's forward and backward, idle gaps per row
        assert sorted({(e.stage, e.replica) for e in run.timeline}) == MESH_2X2
        for row in MESH_2X2:
            kinds = [e.kind for e in run.timeline if (e.stage, e.replica) == row]
            assert kinds.count("forward") == kinds.count("backward") == 2 * 2, row  # M x steps
            assert kinds.count("update") == kinds.count("reduce") == 2, row


def test_merge_refuses_replicas_that_diverged():
    part = {"losses": [1.0], "timeline": [], "wall": 1.0, "stats": {},
            "params": {"w": np.zeros(3, np.float32)}}
    other = {**part, "params": {"w": np.array([0, 0, 1e-30], np.float32)}}
    job = make_job(Plan.backprop(2), n_steps=1)
    assert merge([part, dict(part)], job, replicas=2).params["w"].tolist() == [0, 0, 0]
    # the timeline keeps every rank's events, sorted by start, each rank its own replica
    late = {**part, "timeline": [(0, "forward", 0.5, 1.0, 0, 0)]}
    early = {**part, "timeline": [(0, "forward", 0.25, 1.0, 0, 1)]}
    assert merge([late, early], job, replicas=2).timeline == \
        [Event(0, "forward", 0.25, 1.0, 0, 1), Event(0, "forward", 0.5, 1.0, 0, 0)]
    with pytest.raises(RuntimeError, match="stage 0 replica 1 ended with other weights"):
        merge([part, other], job, replicas=2)


@pytest.mark.parametrize("replicas, batch, match", [
    (0, 8, r"replicas must be an int >= 1 \(data-parallel copies of each stage\), got 0"),
    (True, 8, r"replicas must be an int >= 1 .*got True"),
    ("2", 8, r"replicas must be an int >= 1 .*got '2'"),
    (3, 8, r"the batch size 8 does not divide by replicas=3; .*a multiple of 3"),
])
def test_bad_replicas_are_refused_before_any_process_starts(replicas, batch, match):
    job = make_job(Plan.greedy(2), batches=RandomBatches(batch))
    with pytest.raises(ValueError, match=match):
        run_distributed(job, replicas=replicas)
    with pytest.raises(ValueError, match=match):
        run_pipeline(job, replicas=replicas, n_microbatches=1)
    assert not spawned_children()


def test_pipeline_microbatches_must_divide_each_replicas_shard():
    with pytest.raises(ValueError, match=r"n_microbatches must be a positive int dividing the "
                                         r"batch size per replica \(4\), got 3"):
        run_pipeline(make_job(Plan.greedy(2)), replicas=2, n_microbatches=3)


TIMEOUT = 3


@pytest.mark.parametrize("action, match", [
    ("kill", r"^distributed run failed: stage 0 replica 1 \(pid \d+\) was killed by SIGKILL"),
    ("raise", r"^distributed run failed: stage 0 replica 1 raised ValueError: replica 1 fails on "
              r"purpose"),
    ("hang", r"^distributed run failed: stage 0 replica 1 \(pid \d+\) (was still running but "
             r"silent when its peers gave up on it|made no progress)"),
])
def test_a_failing_replica_stops_every_rank_naming_its_stage_and_replica(tmp_path, action, match):
    stamp = tmp_path / "fault_at"
    batches = FaultyBatches(8, rank=1, action=action, stamp=str(stamp),  # stage 0, replica 1
                            message="replica 1 fails on purpose")
    # 1 x 2 processes where a replica's own error is the point, 2 x 2 where its partners name it
    plan = Plan.overlapping(2) if action == "hang" else Plan.backprop(2)
    job = make_job(plan, n_steps=50, batches=batches)
    with pytest.raises(WorkerError, match=match) as err:
        run_distributed(job, timeout=TIMEOUT, threads=1, replicas=2)
    late = time.time() - float(stamp.read_text())
    assert late < TIMEOUT + 10, f"{action}: every rank stopped {late:.1f} s after the fault"
    if action == "hang":  # its partners name it: its replica and its next stage's replica
        assert re.search(r"stage 0 replica 0 timed out after 3 s waiting to average the "
                         r"gradients of step 3 with stage 0 replica 1", str(err.value))
    assert len(err.value.pids) == 2 * plan.n_stages
    assert not set(err.value.pids) & spawned_children()
