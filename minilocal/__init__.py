"""minilocal: local parallelism (greedy, overlapping and chunked local updates) from scratch.

The Plan says which loss trains which block; the NumPy core (``minilocal.numpy_core``) and the
torch ``LocalNet`` both read it. Torch is imported only when a torch name is first used, so the
NumPy lessons start fast. Importing minilocal sets one thread count for NumPy's BLAS, OpenMP and
torch (``minilocal.threads``: ``MINILOCAL_THREADS=N`` chooses it).
"""
from .plan import Plan
from .threads import set_threads

set_threads()

__all__ = ["Plan", "LocalNet", "stage_step", "device", "fit"]
__version__ = "0.1.0"

_LAZY = {"LocalNet": "local", "Stage": "local", "stage_step": "local", "StepResult": "local",
         "device": "devices", "fit": "train"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'minilocal' has no attribute {name!r}")
