"""minilocal: local parallelism (greedy, overlapping and chunked local updates) from scratch.

The Plan says which loss trains which block; the NumPy core (``minilocal.numpy_core``) and the
torch ``LocalNet`` both read it.
"""
from .plan import Plan

__all__ = ["Plan"]
__version__ = "0.1.0"
