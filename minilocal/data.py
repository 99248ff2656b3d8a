"""Offline, deterministic data. MNIST-1D is generated procedurally (never downloaded).

MNIST-1D (Greydanus 2020): 10 classes of 1-D signals of length 40, 4000 train / 1000 test.
Generation takes ~2 s, so the arrays are cached in memory and under ~/.cache/minilocal.
"""
import functools
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np


def cache_dir():
    """Where generated data is cached: $MINILOCAL_CACHE or ~/.cache/minilocal."""
    return Path(os.environ.get("MINILOCAL_CACHE", Path.home() / ".cache" / "minilocal"))


def _atomic_save_npz(path, **arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    os.close(fd)
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


@functools.lru_cache(maxsize=4)
def _mnist1d_arrays(num_samples, seed):
    key = hashlib.sha1(f"mnist1d-v1-{num_samples}-{seed}".encode()).hexdigest()[:12]
    path = cache_dir() / f"mnist1d-{key}.npz"
    if path.exists():
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    raw = make_dataset(args)  # procedural: no network
    arrays = {"x": raw["x"], "y": raw["y"], "x_test": raw["x_test"], "y_test": raw["y_test"]}
    try:
        _atomic_save_npz(path, **arrays)
    except OSError:
        pass  # a read-only home still gets the data, just not cached
    return arrays


def mnist1d(num_samples=5000, seed=42, dtype=np.float32):
    """MNIST-1D as a dict of arrays: x (N, 40), y (N,) int64, x_test, y_test (80/20 split).

    Inputs are standardised with the training set's mean and std.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 10:
        raise ValueError(f"mnist1d: num_samples must be an int >= 10, got {num_samples!r}")
    raw = _mnist1d_arrays(num_samples, seed)
    mean, std = raw["x"].mean(), raw["x"].std()
    return {"x": ((raw["x"] - mean) / std).astype(dtype), "y": raw["y"].astype(np.int64),
            "x_test": ((raw["x_test"] - mean) / std).astype(dtype),
            "y_test": raw["y_test"].astype(np.int64)}
