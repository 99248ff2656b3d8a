"""How worker processes start: a warm forkserver (torch already imported) or fresh interpreters.

(Outside ``runtime/``, and free of torch, so that the command line can start the server before it
imports torch itself: ``warm_up``.)

``forkserver`` (the default on Linux): the first launch starts one server process that imports
torch, ``torch._dynamo`` (which the first ``torch.optim`` constructor would otherwise import, about
a second per process) and ``minilocal.runtime`` (``_warm.py``); every worker after that is a fork
of it, so it starts with all of that in memory. The server stays up between launches (a notebook
pays for it once) and exits with the launching process. ``spawn`` (the default elsewhere): each
worker is a fresh interpreter that imports everything itself. Choose with
``MINILOCAL_START_METHOD=forkserver|spawn`` or ``launch(..., start_method=...)``.

A forkserver worker is the server's child, not the launcher's, so dying with the launcher takes
two links, both checked here: the server exits when the launcher does (it reads EOF on a pipe
only the launcher holds; ``release_server_pipe`` drops the workers' copies), each worker gets
SIGKILL when the server dies (PR_SET_PDEATHSIG), and each also watches the launcher's pid itself
(a pidfd where Linux has one, else polling) and exits when it is gone.
"""
import atexit
import contextlib
import multiprocessing
import os
import select
import signal
import sys
import threading
import time

METHODS = ("forkserver", "spawn")
PRELOAD = ["minilocal.runtime._warm"]
WATCH_EVERY_S = 0.2  # without a pidfd: how often a worker looks for its launcher


def default_method():
    """forkserver where the platform has it (Linux), else spawn."""
    return "forkserver" if sys.platform.startswith("linux") and \
        "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def start_method(requested=None):
    """The method to use: ``requested``, else $MINILOCAL_START_METHOD, else ``default_method()``."""
    method = requested or os.environ.get("MINILOCAL_START_METHOD") or default_method()
    if method not in METHODS:
        where = "start_method" if requested else "MINILOCAL_START_METHOD"
        raise ValueError(f"launch: {where} must be 'forkserver' or 'spawn', got {method!r}")
    if method not in multiprocessing.get_all_start_methods():
        raise ValueError(f"launch: this platform ({sys.platform}) has no forkserver start "
                         f"method; use 'spawn' (MINILOCAL_START_METHOD=spawn)")
    return method


def context(method):
    """A multiprocessing context for ``method``; for forkserver, with the warm server running."""
    import torch.multiprocessing as mp  # its pickling of tensors, for the workers' arguments

    warm_up(method)
    return mp.get_context(method)


def warm_up(method=None):
    """Start the forkserver now, if ``method`` (see ``start_method``) is forkserver, so that its
    imports overlap whatever this process does next; later launches reuse it. Returns the method."""
    method = start_method(method)
    if method == "forkserver":
        from multiprocessing import forkserver

        multiprocessing.set_forkserver_preload(PRELOAD)  # read when the server starts, not after
        forkserver.ensure_running()
    return method


def server_pid():
    """The warm forkserver's pid in this process, or None when none was started."""
    from multiprocessing import forkserver

    return getattr(forkserver._forkserver, "_forkserver_pid", None)


def _stop_server():
    """At exit: close the server's pipe and reap it, rather than leave it to the OS."""
    from multiprocessing import forkserver

    stop = getattr(forkserver._forkserver, "_stop", None)
    if stop is not None and server_pid() is not None:
        with contextlib.suppress(FileNotFoundError):  # its socket's folder may be gone already
            stop()


atexit.register(_stop_server)


def release_server_pipe():
    """In a forkserver worker: drop this process's copy of the server's "launcher alive" pipe,
    so that the server exits when the launcher does, not when its last worker does."""
    from multiprocessing import forkserver

    fd = getattr(forkserver._forkserver, "_forkserver_alive_fd", None)
    if fd is not None:
        os.close(fd)
        forkserver._forkserver._forkserver_alive_fd = None


def die_with_parent(parent):
    """SIGKILL this process when its parent (``parent``: the launcher, or the forkserver) dies;
    exit now if it has died already."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    if parent is not None and os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)


def _gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a zombie is gone too (its parent has not reaped it yet)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def exit_when_gone(pid, what):
    """Exit this process as soon as process ``pid`` ends (a daemon thread waits on a pidfd, or
    polls where there is none); exit now if it has ended already."""
    def leave():
        sys.stderr.write(f"minilocal worker (pid {os.getpid()}): the {what} (pid {pid}) died; "
                         f"exiting so no orphan keeps training\n")
        sys.stderr.flush()
        os._exit(1)
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        leave()
    except (AttributeError, OSError):  # no pidfd (not Linux, or a kernel before 5.3)
        fd = None
    if fd is None and _gone(pid):
        leave()

    def watch():
        if fd is not None:
            poll = select.poll()
            poll.register(fd, select.POLLIN)
            while not poll.poll():
                pass
        else:
            while not _gone(pid):
                time.sleep(WATCH_EVERY_S)
        leave()
    threading.Thread(target=watch, name=f"watch-{what}", daemon=True).start()


class Stdio:
    """The launcher's stdout and stderr as they are at this launch, handed to a forkserver
    worker, which would otherwise write wherever the server's were when it started (under
    pytest's capture, say); the worker unpickles it as the pair of fds (``adopt``)."""

    def __reduce__(self):  # pickled while the worker is being started: the fds go with it
        from multiprocessing import reduction

        return _detach, (reduction.DupFd(1), reduction.DupFd(2))


def _detach(*dup_fds):
    return tuple(d.detach() for d in dup_fds)


def adopt(stdio):
    """In a worker: make the fds from ``Stdio`` this process's stdout and stderr."""
    sys.stdout.flush()
    sys.stderr.flush()
    for target, fd in zip((1, 2), stdio):
        os.dup2(fd, target)
        os.close(fd)
