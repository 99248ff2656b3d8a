"""Start one process per stage and bring back plain data, or a clear error, and never orphans.

``launch(fn, args, nprocs)`` spawns ``fn(rank, nprocs, *args)`` in fresh interpreters (the
``spawn`` start method, so it works from a notebook: ``fn`` lives in the package), with the
rendezvous on 127.0.0.1 and a free port in the environment. Each worker returns plain data
(lists, numpy arrays), which comes back through a queue. If any worker raises or dies, the
launcher stops the others (SIGTERM, then SIGKILL) and raises WorkerError naming the stage; on
KeyboardInterrupt it does the same and re-raises. Workers ignore SIGINT (the launcher decides)
and die with their parent on Linux (PR_SET_PDEATHSIG), so even a killed launcher leaves none.
"""
import atexit
import os
import queue
import signal
import socket
import sys
import time
import traceback

import torch.multiprocessing as mp

POLL_S = 0.05      # how often the launcher looks at its workers
SETTLE_S = 0.5     # after a failure, time to collect the other workers' reports
STOP_GRACE_S = 2.0  # SIGTERM, then SIGKILL after this


class WorkerError(RuntimeError):
    """A worker raised or died; ``pids`` lists every worker process (all stopped by now)."""

    def __init__(self, message, pids):
        super().__init__(message)
        self.pids = pids


def free_port():
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent(parent):
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _entry(rank, nprocs, port, parent, fn, args, results):
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(nprocs), LOCAL_WORLD_SIZE=str(nprocs))
    try:
        results.put(("ok", rank, fn(rank, nprocs, *args)))
    except BaseException as e:  # noqa: BLE001 - every failure must reach the launcher
        results.put(("error", rank, f"{type(e).__name__}: {e}\n\n{traceback.format_exc()}"))
    # The work is done and reported: flush the report, run the exit handlers (multiprocessing
    # releases its semaphores there), then skip the interpreter's slow teardown of torch.
    results.close()
    results.join_thread()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _stop(procs, exit_s):
    """Give workers ``exit_s`` to exit by themselves, then SIGTERM, then SIGKILL."""
    deadline = time.monotonic() + exit_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()


def _describe(rank, pid, exitcode):
    if exitcode < 0:
        return f"stage {rank} (pid {pid}) was killed by {signal.Signals(-exitcode).name}"
    return (f"stage {rank} (pid {pid}) exited with code {exitcode} before reporting (any "
            f"traceback it printed is on stderr)")


def _failure(procs, errors, results):
    """Collect what went wrong (deaths first: a peer's error is usually their consequence)."""
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        try:
            kind, rank, value = results.get(timeout=POLL_S)
        except queue.Empty:
            continue
        if kind == "error":
            errors[rank] = value
    died = [_describe(r, p.pid, p.exitcode) for r, p in enumerate(procs)
            if p.exitcode not in (None, 0) and r not in errors]
    raised = [f"stage {r} raised {msg}" for r, msg in sorted(errors.items())]
    lines = died + [m.split("\n\n")[0] for m in raised]
    detail = "\n".join(m for m in raised)
    return (f"distributed run failed: {lines[0]}" + "".join(f"\n  then {m}" for m in lines[1:])
            + (f"\n\nworker traceback(s):\n{detail}" if detail else ""))


def launch(fn, args, nprocs, timeout=None):
    """Run ``fn(rank, nprocs, *args)`` in ``nprocs`` processes; returns their results by rank."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, daemon=True,
                         args=(r, nprocs, port, os.getpid(), fn, args, results))
             for r in range(nprocs)]
    pids, finished = [], False
    try:
        for p in procs:
            p.start()
            pids.append(p.pid)
        done, errors = {}, {}
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(done) < nprocs:
            try:
                kind, rank, value = results.get(timeout=POLL_S)
                (done if kind == "ok" else errors)[rank] = value
            except queue.Empty:
                pass
            dead = [p for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in done]
            if errors or dead:
                raise WorkerError(_failure(procs, errors, results), pids)
            if deadline is not None and time.monotonic() > deadline:
                raise WorkerError(f"distributed run did not finish within timeout={timeout} s; "
                                  f"stages still running: {sorted(set(range(nprocs)) - set(done))}",
                                  pids)
        finished = True
        return [done[r] for r in range(nprocs)]
    finally:  # on success, error or KeyboardInterrupt: no worker outlives the call
        _stop([p for p in procs if p.pid is not None], 10.0 if finished else 0.0)
        results.close()
