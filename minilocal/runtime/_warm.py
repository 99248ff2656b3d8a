"""Imported once by the forkserver (``minilocal/start_method.py``): every worker forked from it
starts with these modules loaded.

Only imports and one optimizer built on a 1-element tensor: nothing that starts a thread pool,
which a fork would copy in a broken state.
"""
import atexit
import os

import torch
import torch._dynamo  # noqa: F401  (torch.optim imports it on first use: ~1 s per process)
import torch.distributed  # noqa: F401

import minilocal.models  # noqa: F401
import minilocal.runtime.distributed  # noqa: F401

torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


def _exit_fast(server=os.getpid()):
    """When the launcher is gone the server ends at once, without tearing torch down (about
    half a second); only in the server itself, not in the workers forked from it."""
    if os.getpid() == server:
        os._exit(0)


atexit.register(_exit_fast)
