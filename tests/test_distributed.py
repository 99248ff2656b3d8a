"""One process per stage on gloo: equal to the sequential runner (bitwise), the pipelining
baseline equal to backprop, and faults (a killed worker, a missing message, an interrupt)
that end in a clear error with no process left (a killed worker and an interrupt under both start
methods). Each test starts one process group."""
import functools
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from minilocal import Plan, models
from minilocal.local import cross_entropy
from minilocal.runtime import (Job, ModelSpec, RandomBatches, WorkerError, pipeline_model,
                               run_distributed, run_pipeline, run_sequential, sgd, simulate)
from minilocal.runtime.launch import launcher_pid
from minilocal.runtime.timeline import KINDS

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(120)]
torch.set_num_threads(1)


def make_job(plan, n_steps=8, delay=0, batches=None):
    return Job(ModelSpec(models.mlp, {"width": 16}), plan, batches or RandomBatches(8),
               functools.partial(sgd, lr=0.2), n_steps, delay)


def assert_same_run(got, want):
    assert got.history == want.history
    assert got.params.keys() == want.params.keys()
    for k in want.params:
        assert torch.equal(torch.from_numpy(got.params[k]), torch.from_numpy(want.params[k])), k


def live_processes():
    """(pid, parent pid, command line) of every live (not zombie) process."""
    for d in Path("/proc").iterdir():
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                yield int(d.name), int(fields[1]), (d / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue


def spawned_children():
    """Pids of the workers this process launched and that still live (not helpers): its children
    started by multiprocessing's spawn, and the children of its forkserver (under the forkserver
    start method a worker is the server's child, not ours; the server itself stays warm)."""
    me, procs = os.getpid(), list(live_processes())
    servers = {pid for pid, ppid, cmd in procs
               if ppid == me and b"multiprocessing.forkserver import main" in cmd}
    return {pid for pid, ppid, cmd in procs
            if (ppid == me and b"spawn_main" in cmd) or ppid in servers}


@pytest.fixture(params=["forkserver", "spawn"])
def start_method(request, monkeypatch):
    """Run the test under each start method (launch reads MINILOCAL_START_METHOD)."""
    monkeypatch.setenv("MINILOCAL_START_METHOD", request.param)
    return request.param


@dataclass(frozen=True, eq=False)
class FaultyBatches(RandomBatches):
    """RandomBatches whose worker ``rank`` misbehaves when it asks for batch ``step``."""
    rank: int = 0
    step: int = 3
    action: str = "kill"
    stamp: str = ""
    message: str = "fails on purpose"

    def __call__(self, t):
        if t == self.step and os.environ.get("RANK") == str(self.rank):
            if self.stamp:
                Path(self.stamp).write_text(repr(time.time()))
            if self.action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if self.action == "interrupt":  # the launcher (under forkserver not our parent)
                os.kill(launcher_pid(), signal.SIGINT)
            if self.action == "raise":
                raise ValueError(self.message)
            time.sleep(60)
        return super().__call__(t)


def test_two_stages_equal_sequential_and_simulator_bitwise():
    overlap = make_job(Plan.overlapping(2))
    jobs = [overlap, overlap.replace(delay=1), make_job(Plan.greedy(2))]
    sync, delayed, greedy = run_distributed(jobs, timeout=30)
    assert_same_run(sync, run_sequential(jobs[0]))
    assert_same_run(delayed, simulate(jobs[1], [1, 1]))     # same delay, same numbers
    assert_same_run(greedy, run_sequential(jobs[2]))
    assert [s["sent_grad"] for s in sync.stats] == [0, 8]   # one backward message per step
    assert [s["sent_grad"] for s in greedy.stats] == [0, 0]  # greedy: forward messages only
    assert [s["sent_act"] for s in greedy.stats] == [8, 0]
    assert {e.kind for e in sync.timeline} <= set(KINDS)
    assert sum(e.kind == "forward" and e.stage == 1 for e in sync.timeline) == 8


def test_three_stages_equal_sequential_bitwise():
    jobs = [make_job(Plan.overlapping(3)), make_job(Plan.chunked(5, 3, overlap=1))]
    for got, job in zip(run_distributed(jobs, timeout=30), jobs):
        assert_same_run(got, run_sequential(job))


def test_gpipe_and_1f1b_gradients_equal_backprop():
    job = make_job(Plan.greedy(3), n_steps=2)
    runs = run_pipeline(job, ["gpipe", "1f1b"], n_microbatches=4, timeout=30)
    full = torch.nn.Sequential(*pipeline_model(job))
    x, y = job.batches(0)
    cross_entropy(full(x), y).backward()
    for name, run in runs.items():
        assert run.grads.keys() == dict(full.named_parameters()).keys(), name
        for k, p in full.named_parameters():
            np.testing.assert_allclose(run.grads[k], p.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(runs["gpipe"].history["train_loss"],
                               runs["1f1b"].history["train_loss"], rtol=1e-6)


def test_killed_worker_raises_within_10_s_and_leaves_no_process(tmp_path, start_method):
    stamp = tmp_path / "killed_at"
    job = make_job(Plan.greedy(2), n_steps=50, batches=FaultyBatches(8, stamp=str(stamp)))
    with pytest.raises(WorkerError, match=r"stage 0 \(pid \d+\) was killed by SIGKILL") as err:
        run_distributed(job, timeout=30)
    assert time.time() - float(stamp.read_text()) < 10
    assert len(err.value.pids) == 2
    assert not set(err.value.pids) & spawned_children()


def test_missing_message_times_out_naming_the_stage():
    job = make_job(Plan.greedy(2), batches=FaultyBatches(8, step=2, action="hang"))
    start = time.monotonic()
    with pytest.raises(WorkerError, match=r"stage 1 timed out after 2 s waiting to receive the "
                                          r"activation of step 2 \(peer: stage 0\)") as err:
        run_distributed(job, timeout=2)
    assert time.monotonic() - start < 60  # the hanging stage sleeps 60 s: it was stopped
    assert not set(err.value.pids) & spawned_children()


def test_keyboard_interrupt_stops_every_worker(start_method):
    job = make_job(Plan.greedy(2), n_steps=50, batches=FaultyBatches(8, action="interrupt"))
    # Python ignores SIGINT when it starts as a background job of a non-interactive shell (as in
    # `(make test &)`): give this test the handler of an interactive session, then restore it
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_distributed(job, timeout=30)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not spawned_children()
