"""One thread count for NumPy's BLAS, OpenMP and torch, set when minilocal is first imported.

The course's matrices are small: on a laptop, many BLAS/OpenMP threads per kernel spin against each
other (and against a second kernel) and run many times slower than one thread, which is what the
tests use. So ``import minilocal`` limits every thread pool to

- ``MINILOCAL_THREADS`` if set (a positive integer), else
- ``OMP_NUM_THREADS`` if set (the test suite sets 1), else
- half the CPUs this process may use, between 1 and 4.

Child processes (the runtime's workers) inherit the count through the environment.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping

ENV = "MINILOCAL_THREADS"
POOL_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_threads(cpus: int | None = None) -> int:
    """Half the usable CPUs, at least 1 and at most 4: enough for the course's small matmuls."""
    cpus = usable_cpus() if cpus is None else cpus
    return max(1, min(4, cpus // 2))


def _positive_int(name, text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name}={text!r}: the thread count must be a positive integer, e.g. "
                         f"{name}=2 (unset it to let minilocal choose)")
    return value


def chosen_threads(environ: Mapping[str, str] | None = None) -> int:
    """The thread count the rules in this module's docstring give for ``environ``."""
    environ = os.environ if environ is None else environ
    for name in (ENV, "OMP_NUM_THREADS"):
        if environ.get(name, "").strip():
            return _positive_int(name, environ[name].strip())
    return default_threads()


def set_threads(n: int | None = None) -> int:
    """Limit BLAS, OpenMP and torch to ``n`` threads (default: ``chosen_threads()``); returns n."""
    n = chosen_threads() if n is None else _positive_int("set_threads(n)", str(n))
    for name in POOL_VARS:  # read by libraries loaded later and by child processes
        os.environ[name] = str(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # the env vars above still reach libraries loaded from now on
        pass
    else:
        threadpool_limits(limits=n)  # NumPy's BLAS, already loaded by the time minilocal is
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    return n
