"""Start one process per stage and bring back plain data, or a clear error, and never orphans.

``launch(fn, args, nprocs)`` starts ``fn(rank, nprocs, *args)`` in ``nprocs`` worker processes
(``fn`` lives in the package, so it works from a notebook), with the rendezvous on 127.0.0.1 and a
free port in the environment. Each worker returns plain data (lists, numpy arrays); the worker
pickles it itself, so a result that cannot be pickled is reported as such, and the bytes come back
through a queue.

Start method (``minilocal/start_method.py``): ``forkserver``, the default on Linux, forks every
worker from one warm server that has torch, ``torch._dynamo`` and ``minilocal.runtime`` imported already (started at
the first launch, reused by the next ones, gone with the launching process); ``spawn``, the
default elsewhere, starts fresh interpreters that import everything themselves. Choose with
``MINILOCAL_START_METHOD=forkserver|spawn`` or ``launch(..., start_method=...)``. A worker gets the
launcher's environment, working directory, sys.path and stdout/stderr as they are at the launch,
under either method.

Every way a worker can end is an outcome: it reports a result, it raises, it dies (a signal, or
any exit, code 0 included, without a report), or it misses its deadline. A worker that calls
``beat(within_s)`` promises its next beat within that time; one that misses it is stopped as
hung. On any failure the launcher stops the others (SIGTERM, then SIGKILL) and raises
WorkerError: the first cause first (a stage that raised or died on its own), then the peers'
errors that followed from it (a lost connection, a timed-out message: ``PeerError``). On
KeyboardInterrupt it does the same and re-raises. Workers ignore SIGINT (the launcher decides)
and die with the launcher, even a killed one: they watch its pid (``launcher_pid()``; a pidfd on
Linux), get SIGKILL when their parent dies (PR_SET_PDEATHSIG; under forkserver the parent is the
server, which exits with the launcher), so none is left. Under torchrun ``watch_parent`` does the
same for the agent.
"""
import atexit
import os
import pickle
import queue
import re
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass

from .. import start_method as start

POLL_S = 0.05      # how often the launcher looks at its workers
SETTLE_S = 0.5     # after a failure, time to collect the other workers' reports
STOP_GRACE_S = 2.0  # SIGTERM, then SIGKILL after this
# gloo's words for a peer that went away: an error with one of them is a consequence, not a cause
PEER_SIGNS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
              "Socket closed", "Connection refused")

_life = None  # in a launched worker: (shared array, rank, nprocs); see launch()
_launcher = None  # in a launched worker: the launcher's pid


class WorkerError(RuntimeError):
    """A worker raised, died or hung; ``pids`` lists every worker process (all stopped by now)."""

    def __init__(self, message, pids):
        super().__init__(message)
        self.pids = pids


class PeerError(RuntimeError):
    """A stage failed because of another one (a lost connection, a message that never came);
    ``peer`` is that stage's rank when known (a tuple of ranks when it is one of several)."""

    def __init__(self, message, peer=None):
        super().__init__(message)
        self.peer = peer


class PeerTimeout(PeerError, TimeoutError):
    """A message from or to a peer did not complete within the timeout."""


def gloo_words(error):
    """gloo's message without its source location and its boilerplate advice."""
    text = re.sub(r"\[[^\]]*\.(cc|cpp|h):\d+\] ", "", str(error))
    return text.split(" This is typically caused")[0]


def peer_failure(e, peer, timed_out, failed):
    """The error for gloo's ``e`` on an operation with ``peer``: ``PeerTimeout(timed_out)`` when
    it timed out, else ``PeerError`` with ``failed`` and gloo's own words."""
    if "timed out" in str(e).lower():
        return PeerTimeout(timed_out, peer)
    return PeerError(f"{failed}: {gloo_words(e)}", peer)


def free_port():
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def beat(within_s, steps=0):
    """In a launched worker: promise the next beat within ``within_s`` seconds and count ``steps``
    more steps done (the launcher's progress). Elsewhere (torchrun, tests) it does nothing."""
    if _life is None:
        return
    life, rank, nprocs = _life
    life[nprocs + rank] = within_s
    life[rank] = time.time() + within_s
    life[2 * nprocs + rank] += steps


def launcher_pid():
    """In a launched worker: the pid of the process that called ``launch`` (under forkserver it
    is not the parent: the server is). Elsewhere: None."""
    return _launcher


def watch_parent(what="parent"):
    """Exit this process as soon as its parent dies (``start_method.exit_when_gone``: a pidfd, or
    polling where there is none).

    For workers someone else started (torchrun's agent): a thread works however the parent
    started us, where PR_SET_PDEATHSIG would fire when the parent's starting *thread* ends."""
    start.exit_when_gone(os.getppid(), what)


def _is_consequence(e):
    return isinstance(e, PeerError) or any(sign in str(e) for sign in PEER_SIGNS)


def _entry(rank, nprocs, port, parent, fn, args, results, life, name, server, env,
           stdio):
    global _life, _launcher
    if server is not None:  # forkserver: the parent is the server, which exits with the launcher
        start.release_server_pipe()
    start.die_with_parent(server or parent)
    start.exit_when_gone(parent, "launcher")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _life, _launcher = (life, rank, nprocs), parent
    os.environ.clear()  # the launcher's, as at this launch (a forkserver's is from its start)
    os.environ.update(env)
    if stdio is not None:
        start.adopt(stdio)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(nprocs), LOCAL_WORLD_SIZE=str(nprocs))
    try:
        value = fn(rank, nprocs, *args)
        try:  # pickled here, not in the queue's feeder thread, which would drop the error
            payload = pickle.dumps(value)
        except Exception as e:  # noqa: BLE001 - any pickling failure is the same report
            raise TypeError(f"{name}'s result could not be pickled to send it back "
                            f"({type(e).__name__}: {e}); return plain data: lists, dicts, "
                            f"numbers, numpy arrays") from None
        results.put(("ok", rank, time.time(), payload))
    except BaseException as e:  # noqa: BLE001 - every failure must reach the launcher
        kind = "peer" if _is_consequence(e) else "error"
        results.put((kind, rank, time.time(),
                     Failure(f"{type(e).__name__}: {e}", traceback.format_exc(),
                             getattr(e, "peer", None))))
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


@dataclass(frozen=True)
class Failure:
    """A worker's report of its exception: one line, the traceback, the peer it blames."""
    headline: str
    traceback: str = ""
    peer: int = None


class _Reports:
    """What the workers said so far: results, their own errors (causes) and peers' errors."""

    def __init__(self, results):
        self.results = results
        self.done, self.causes, self.peers = {}, {}, {}  # rank -> result, rank -> (time, Failure)

    def read(self, wait_s):
        """Take every report that arrives within ``wait_s`` (at least one look)."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                kind, rank, at, value = self.results.get(
                    timeout=max(0.0, min(POLL_S, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    return
                continue
            if kind == "ok":
                try:
                    self.done[rank] = pickle.loads(value)
                except Exception as e:  # noqa: BLE001 - e.g. a class the launcher cannot import
                    failure = Failure(f"{type(e).__name__} when its result was unpickled here: "
                                      f"{e}", traceback.format_exc())
                    self.causes[rank] = (at, failure)
            else:
                (self.causes if kind == "error" else self.peers)[rank] = (at, value)

    def heard(self, rank):
        return rank in self.done or rank in self.causes or rank in self.peers


def _describe_exit(name, pid, exitcode):
    if exitcode < 0:
        return f"{name} (pid {pid}) was killed by {signal.Signals(-exitcode).name}"
    return (f"{name} (pid {pid}) exited with code {exitcode} without reporting a result "
            f"(an os._exit or a crash in native code; anything it printed is on stderr)")


def _failure(reports, procs, hung, names):
    """One message: the first cause first, then what followed; tracebacks at the end."""
    reports.read(SETTLE_S)
    now = time.time()

    def raised(found):
        return [(at, f"{names[r]} raised {f.headline}", (names[r], f.traceback))
                for r, (at, f) in found.items()]
    causes = raised(reports.causes)
    causes += [(now, _describe_exit(names[r], p.pid, p.exitcode), None) for r, p in enumerate(procs)
               if p.exitcode is not None and not reports.heard(r)]
    causes += [(now, msg, None) for msg in hung]
    if not causes:  # only peers' errors: the stages they blame that are alive and silent
        blamed = set()  # a peer is one rank, or a tuple of them (e.g. a stage's other replicas)
        for _, f in reports.peers.values():
            blamed |= set(f.peer) if isinstance(f.peer, tuple) else {f.peer}
        causes = [(now, f"{names[r]} (pid {p.pid}) was still running but silent when its peers "
                        f"gave up on it: it is likely stuck (or far slower than the timeout)", None)
                  for r, p in enumerate(procs)
                  if r in blamed and p.exitcode is None and not reports.heard(r)]
    ordered = sorted(causes, key=lambda c: c[0]) + sorted(raised(reports.peers), key=lambda c: c[0])
    lines = [line for _, line, _ in ordered]
    detail = "\n".join(f"{tb[0]} traceback:\n{tb[1]}" for _, _, tb in ordered if tb)
    return (f"distributed run failed: {lines[0]}" + "".join(f"\n  then {m}" for m in lines[1:])
            + (f"\n\n{detail}" if detail else ""))


def _missed_deadlines(procs, life, reports, names):
    now, late, n = time.time(), [], len(procs)
    for r, p in enumerate(procs):
        if life[r] and now > life[r] and p.exitcode is None and not reports.heard(r):
            late.append(f"{names[r]} (pid {p.pid}) made no progress for {life[n + r]:g} s: it is "
                        f"stuck (a step or a wait that never ends) or slower than its timeout "
                        f"allows (if it is only slow, raise the timeout)")
    return late


def launch(fn, args, nprocs, timeout=None, startup_s=None, progress=None, names=None,
           start_method=None):
    """Run ``fn(rank, nprocs, *args)`` in ``nprocs`` processes; returns their results by rank.

    timeout: seconds for the whole run (None: no limit). startup_s: seconds a worker may take to
    its first ``beat`` (None: workers need not beat). progress: called with the list of steps
    each worker has counted, while the run goes on. names: how errors call each rank (default
    "stage r"). start_method: "forkserver" or "spawn" (None: $MINILOCAL_START_METHOD, else
    forkserver on Linux, spawn elsewhere; see the module docstring).
    """
    names = names or [f"stage {r}" for r in range(nprocs)]
    method = start.start_method(start_method)
    ctx = start.context(method)
    server = start.server_pid() if method == "forkserver" else None
    results = ctx.Queue()
    # per rank: next deadline (0: none), the seconds it allowed, steps done; written by beat()
    life = ctx.Array("d", 3 * nprocs, lock=False)
    port = free_port()
    stdio = start.Stdio() if server is not None else None  # spawn: inherited anyway
    procs = [ctx.Process(target=_entry, daemon=True,
                         args=(r, nprocs, port, os.getpid(), fn, args, results, life, names[r],
                               server, dict(os.environ), stdio))
             for r in range(nprocs)]
    pids, finished = [], False
    reports = _Reports(results)
    try:
        for r, p in enumerate(procs):
            if startup_s is not None:
                life[r], life[nprocs + r] = time.time() + startup_s, startup_s
            p.start()
            pids.append(p.pid)
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(reports.done) < nprocs:
            reports.read(POLL_S)
            if progress is not None:
                progress(list(life[2 * nprocs:]))
            if any(p.exitcode is not None and not reports.heard(r) for r, p in enumerate(procs)):
                reports.read(SETTLE_S)  # an exit may come before its report has been read
            silent = [r for r, p in enumerate(procs)
                      if p.exitcode is not None and not reports.heard(r)]
            hung = _missed_deadlines(procs, life, reports, names)
            if reports.causes or reports.peers or silent or hung:
                raise WorkerError(_failure(reports, procs, hung, names), pids)
            if deadline is not None and time.monotonic() > deadline:
                running = [names[r] for r in sorted(set(range(nprocs)) - set(reports.done))]
                raise WorkerError(f"distributed run did not finish within timeout={timeout} s; "
                                  f"still running: {', '.join(running)}", pids)
        finished = True
        return [reports.done[r] for r in range(nprocs)]
    finally:  # on success, error or KeyboardInterrupt: no worker outlives the call
        _stop([p for p in procs if p.pid is not None], 10.0 if finished else 0.0)
        results.close()
