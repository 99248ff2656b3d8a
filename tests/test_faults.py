"""Faults in the runtime end in a clear error, soon, with no process left behind.

Launcher faults use tiny workers (no process group): a raise, kill -9, an exit 0 without a report,
a result that cannot be pickled, a hung worker, a slow one, each under both start methods
(forkserver and spawn), and a launcher killed with SIGKILL, which must take its workers (and the
forkserver) with it. Two runs on gloo check the real
thing: a bad batch fails on stage 0 with the sequential runner's message before any message is
sent, and a hung stage is named as the likely cause. The two-node torchrun test (a killed agent,
2 stages x 2 replicas, both rank orders, either agent) takes 30-47 s for its four cases on this
2-core box and runs by default wherever /proc exists (tests/test_torchrun.py holds the runs that
succeed).
"""
import functools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from minilocal import Plan, models
from minilocal.runtime import Job, ModelSpec, RandomBatches, WorkerError, run_distributed, sgd
from minilocal.runtime import run_sequential
from minilocal import start_method as start
from minilocal.runtime.launch import PeerError, beat, launch
from test_distributed import spawned_children, start_method  # noqa: F401  (a fixture)

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(120)]
torch.set_num_threads(1)
FAIL_WITHIN_S = 5.0  # from the fault to the error in the caller, on a loaded 2-core machine


def children_of(pid):
    """Pids of live (not zombie) processes whose parent is ``pid``."""
    out = set()
    for d in Path("/proc").iterdir():
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[1] == str(pid) and fields[0] != "Z":
                out.add(int(d.name))
        except (OSError, IndexError):
            continue
    return out


def misbehave(rank, world, action, stamp):
    """Stage 1 does ``action``; stage 0 is healthy but slow, so it must be stopped, not awaited."""
    if rank == 1:
        Path(stamp).write_text(repr(time.time()))
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "exit0":
            os._exit(0)
        if action == "raise":
            raise ValueError("stage 1 fails on purpose")
        if action == "unpicklable":
            return threading.Lock()
        if action == "hang":
            beat(1.0)
            time.sleep(60)
        if action == "slow":
            for _ in range(6):
                beat(1.0)
                time.sleep(0.4)  # slow, but always within the deadline it promised
            return "slow but done"
    if action == "raise":  # what a peer of a failed stage sees at about the same time
        while not Path(stamp).exists():
            time.sleep(0.01)
        raise PeerError("stage 0 lost its peer (connection closed)", peer=1)
    if action == "slow":
        return "done"
    time.sleep(60)
    return "never"


@pytest.mark.parametrize("action, match", [
    ("kill", r"^distributed run failed: stage 1 \(pid \d+\) was killed by SIGKILL"),
    ("exit0", r"^distributed run failed: stage 1 \(pid \d+\) exited with code 0 without "
              r"reporting a result"),
    ("raise", r"^distributed run failed: stage 1 raised ValueError: stage 1 fails on purpose\n"
              r"  then stage 0 raised PeerError: stage 0 lost its peer"),
    ("unpicklable", r"^distributed run failed: stage 1 raised TypeError: stage 1's result could "
                    r"not be pickled to send it back \(TypeError: cannot pickle '_thread.lock'"),
    ("hang", r"^distributed run failed: stage 1 \(pid \d+\) made no progress for 1 s: it is stuck"),
], ids=lambda v: v if v.isalnum() else "")
def test_a_failing_worker_fails_the_launch_soon_and_leaves_no_process(tmp_path, action, match,
                                                                     start_method):
    stamp = tmp_path / "fault_at"
    with pytest.raises(WorkerError, match=match) as err:
        launch(misbehave, (action, str(stamp)), 2)
    late = time.time() - float(stamp.read_text()) - (1.0 if action == "hang" else 0.0)
    assert late < FAIL_WITHIN_S, f"{action}: failed {late:.1f} s after the fault"
    assert len(err.value.pids) == 2 and not set(err.value.pids) & spawned_children()


def test_a_slow_worker_that_keeps_its_deadlines_finishes(tmp_path, start_method):
    assert launch(misbehave, ("slow", str(tmp_path / "stamp")), 2) == ["done", "slow but done"]
    assert not spawned_children()


def where_am_i(rank, world, folder=None):
    """A worker's view: its parent, environment and directory; with ``folder``, it writes its pid
    and its parent's there and sleeps (to be killed with its launcher)."""
    if folder is not None:
        Path(folder, f"rank{rank}.tmp").write_text(f"{os.getpid()} {os.getppid()}")
        Path(folder, f"rank{rank}.tmp").rename(Path(folder, f"rank{rank}"))
        time.sleep(60)
    return {"parent": os.getppid(), "var": os.environ.get("MINILOCAL_TEST_VAR"), "cwd": os.getcwd()}


def test_the_forkserver_stays_warm_and_workers_see_the_launch_time_environment(tmp_path,
                                                                              monkeypatch):
    monkeypatch.setenv("MINILOCAL_START_METHOD", "forkserver")
    first = launch(where_am_i, (), 2)
    monkeypatch.setenv("MINILOCAL_TEST_VAR", "set after the server started")
    monkeypatch.chdir(tmp_path)
    second = launch(where_am_i, (), 2)
    server = start.server_pid()
    assert server is not None and {w["parent"] for w in first + second} == {server}  # one server
    assert [w["var"] for w in first] == [None, None]
    assert [(w["var"], w["cwd"]) for w in second] == [("set after the server started",
                                                        str(tmp_path))] * 2
    assert not spawned_children()


def test_a_bad_start_method_is_refused_naming_the_choices(monkeypatch):
    with pytest.raises(ValueError,
                       match=r"start_method must be 'forkserver' or 'spawn', got 'fork'"):
        launch(where_am_i, (), 2, start_method="fork")
    monkeypatch.setenv("MINILOCAL_START_METHOD", "thread")
    with pytest.raises(ValueError, match=r"MINILOCAL_START_METHOD must be 'forkserver' or 'spawn', "
                                         r"got 'thread'"):
        launch(where_am_i, (), 2)


@pytest.mark.skipif(not Path("/proc").exists(), reason="reads /proc to find the processes")
def test_a_killed_launcher_leaves_no_worker_and_no_server(tmp_path, start_method):
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"from test_faults import where_am_i; from minilocal.runtime.launch import launch; "
            f"launch(where_am_i, ({str(tmp_path)!r},), 2)")
    launcher = subprocess.Popen([sys.executable, "-c", code],
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
    left = []
    try:
        ready = _wait(lambda: all((tmp_path / f"rank{r}").exists() for r in range(2)), 60)
        assert ready is not None, "the workers did not start within 60 s"
        workers, parents = zip(*(map(int, (tmp_path / f"rank{r}").read_text().split())
                                 for r in range(2)))
        if start_method == "forkserver":  # one server, the launcher's child, started them
            assert len(set(parents)) == 1 and parents[0] != launcher.pid
            assert Path(f"/proc/{parents[0]}/stat").read_text().rsplit(")", 1)[1].split()[1] \
                == str(launcher.pid)
        else:
            assert set(parents) == {launcher.pid}
        left = [*workers, *(set(parents) - {launcher.pid})]
        assert all(map(_alive, left))
        launcher.kill()
        launcher.wait()
        gone = _wait(lambda: not any(map(_alive, left)), 5)
        assert gone is not None, f"still alive 5 s after the launcher was killed: " \
                                 f"{[p for p in left if _alive(p)]}"
    finally:  # the processes of a failed check must not outlive it
        for pid in [launcher.pid, *left]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        launcher.wait()


def make_job(plan, n_steps=6, **model):
    return Job(ModelSpec(models.mlp, {"width": 16, **model}), plan, RandomBatches(8),
               functools.partial(sgd, lr=0.2), n_steps)


def test_bad_input_fails_on_stage_0_first_with_the_sequential_message():
    job = make_job(Plan.greedy(2), dtype=torch.bfloat16)  # float32 batches into a bf16 net
    with pytest.raises(TypeError) as sequential:
        run_sequential(job)
    start = time.monotonic()
    with pytest.raises(WorkerError) as distributed:
        run_distributed(job, timeout=10)
    headline = str(distributed.value).split("\n")[0]
    assert headline == f"distributed run failed: stage 0 raised TypeError: {sequential.value}"
    assert "then stage 1" not in headline  # its lost connection follows, as context only
    assert time.monotonic() - start < 60
    assert not set(distributed.value.pids) & spawned_children()


@dataclass(frozen=True, eq=False)
class HangingBatches(RandomBatches):
    """RandomBatches that never return batch ``step`` (stage 0 reads them: it hangs there)."""
    step: int = 2
    stamp: str = ""

    def __call__(self, t):
        if t == self.step and os.environ.get("RANK") == "0":
            Path(self.stamp).write_text(repr(time.time()))
            time.sleep(60)
        return super().__call__(t)


def test_a_hung_stage_is_named_as_the_likely_cause(tmp_path):
    stamp = tmp_path / "hung_at"
    job = make_job(Plan.greedy(2)).replace(batches=HangingBatches(8, stamp=str(stamp)))
    with pytest.raises(WorkerError, match=r"^distributed run failed: stage 0 \(pid \d+\) was "
                                          r"still running but silent when its peers gave up on it"
                                          r"[^\n]*\n  then stage 1 raised PeerTimeout: stage 1 "
                                          r"timed out after 2 s waiting to receive the activation "
                                          r"of step 2 \(peer: stage 0\)") as err:
        run_distributed(job, timeout=2)
    late = time.time() - float(stamp.read_text())
    assert late < 2 + FAIL_WITHIN_S, f"failed {late:.1f} s after stage 0 hung"
    assert not set(err.value.pids) & spawned_children()


# --- torchrun, two nodes on loopback, one agent killed ------------------------------------------
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait(condition, limit_s):
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > limit_s:
            return None
        time.sleep(0.1)
    return time.monotonic() - start


# What the surviving node says: its workers name the replica they lost (a message or a gradient
# average); or, when the killed agent hosted the c10d store, the agent reports the lost rendezvous
# (and may stop its workers before they report).
LOST_PEER = (r"python -m minilocal: (stage \d replica \d (?:could not|timed out)[^\n]*"
             r"stage \d replica \d)")
RENDEZVOUS_LOST = "RendezvousConnectionError: The connection to the C10d store has failed"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").exists(), reason="finds the agents' workers in /proc")
@pytest.mark.parametrize("order", ["replicas-together", "stages-together"])
@pytest.mark.parametrize("victim", [0, 1])
def test_torchrun_workers_die_with_their_agent_and_the_other_node_stops(tmp_path, victim, order):
    """A 2-stage x 2-replica mesh on two agents of two workers, in either rank order (a node
    holds a stage's replicas, or a replica's chain); one agent is SIGKILLed."""
    port, timeout = _free_port(), 5
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=2",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=faults",
           "--max-restarts=0", "-m", "minilocal", "train", "--blocks", "2", "--replicas", "2",
           "--steps", "1000000000", "--data", "random", "--width", "16", "--batch-size", "16",
           "--timeout", str(timeout), "--rank-order", order]
    logs = [tmp_path / f"node{i}.log" for i in range(2)]
    agents = [subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                               env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)
              for log in logs]
    workers = {}
    try:
        def training():  # both workers exist and stage 0's bar has counted some steps
            for i, agent in enumerate(agents):
                workers[i] = children_of(agent.pid) or workers.get(i, set())
            counts = [int(c) for log in logs if log.exists()
                      for c in re.findall(r"\| (\d+)/1000000000", log.read_text())]
            return len(workers) == 2 and all(len(w) == 2 for w in workers.values()) and \
                max(counts, default=0) >= 20
        assert _wait(training, 90) is not None, [log.read_text()[-2000:] for log in logs]
        os.kill(agents[victim].pid, signal.SIGKILL)
        orphans_gone = _wait(lambda: not any(map(_alive, workers[victim])), 10)
        other_done = _wait(lambda: agents[1 - victim].poll() is not None, timeout + 20)
        survivor = logs[1 - victim].read_text()
        lost_peer = re.findall(LOST_PEER, survivor)
        rendezvous = RENDEZVOUS_LOST in survivor
        print(f"victim {victim}: its workers gone in {orphans_gone} s, the other node stopped "
              f"{other_done} s later; peer errors: {lost_peer}; rendezvous lost: {rendezvous}")
        assert orphans_gone is not None and orphans_gone < 2, "the killed agent's workers trained on"
        assert other_done is not None and orphans_gone + other_done < timeout + FAIL_WITHIN_S, \
            "the other node did not stop within the timeout"
        assert agents[1 - victim].returncode != 0
        assert lost_peer or rendezvous, survivor[-3000:]  # the two documented outcomes
        assert not re.search(r"\[rank\d+\]: RuntimeError", survivor), survivor[-3000:]  # raw gloo
        assert not [w for ws in workers.values() for w in ws if _alive(w)]
    finally:  # torchrun puts workers in their own sessions: stop them by pid too
        for pid in [a.pid for a in agents] + [w for ws in workers.values() for w in ws]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for agent in agents:
            agent.wait()
