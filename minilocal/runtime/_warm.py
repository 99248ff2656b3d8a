"""Imported once by the forkserver (``minilocal/start_method.py``), so that every worker forked from it starts warm.

Only imports and one optimizer built on a 1-element tensor: nothing that starts a thread pool,
which a fork would copy in a broken state.
"""
import torch
import torch._dynamo  # noqa: F401  (torch.optim imports it on first use: ~1 s per process)
import torch.distributed  # noqa: F401

import minilocal.models  # noqa: F401
import minilocal.runtime.distributed  # noqa: F401

torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
