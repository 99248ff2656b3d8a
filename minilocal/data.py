"""Offline, deterministic data as dicts of numpy arrays; nothing is ever downloaded.

MNIST-1D (Greydanus 2020): 10 classes of 1-D signals of length 40, 4000 train / 1000 test,
generated procedurally. Generation takes ~2 s, so the arrays are cached in memory and under
~/.cache/minilocal. CIFAR-10 is read only when its files are already on disk. ``as_tensors``
turns any of these dicts into torch tensors.
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


def atomic_write(path, write):
    """``write(tmp_path)`` to a temporary file beside ``path``, then rename it over ``path``: a
    reader sees the old file or the new one, never half of one, and a crash leaves no stray file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; caches and results are shared files
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


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
    def save(tmp):
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, **arrays)

    try:
        atomic_write(path, save)
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


def as_tensors(data, device=None):
    """The arrays of a data dict (e.g. ``mnist1d()``) as torch tensors, built on CPU then moved."""
    import torch

    if not isinstance(data, dict):
        raise TypeError(f"as_tensors: data must be a dict of arrays such as mnist1d() returns, "
                        f"got {type(data).__name__}")
    out = {}
    for key, value in data.items():
        if not isinstance(value, np.ndarray):
            raise TypeError(f"as_tensors: data[{key!r}] must be a numpy array, got "
                            f"{type(value).__name__}")
        out[key] = torch.from_numpy(np.ascontiguousarray(value)).to(device)
    return out


CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _cifar10_candidates(root):
    """Folders that may hold the python batches, in the order they are searched."""
    bases = [Path(root)] if root is not None else []
    if os.environ.get("MINILOCAL_DATA"):
        bases.append(Path(os.environ["MINILOCAL_DATA"]))
    bases.append(cache_dir() / "cifar10")
    return [folder for base in bases for folder in (base, base / "cifar-10-batches-py")]


def read_cifar_batch(path):
    """One CIFAR python batch: x (N, 3, 32, 32) uint8, y (N,) int64."""
    import pickle

    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")  # the official files are Python pickles
    x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return x, np.asarray(batch[b"labels"], dtype=np.int64)


def _channel_stats(x):
    """Per-channel mean and std (1, C, 1, 1) of uint8 images x (N, C, H, W), in [0, 1] units.

    Computed from pixel-value histograms: exact, and no float copy of the whole set is made.
    """
    values = np.arange(256) / 255
    counts = np.stack([np.bincount(x[:, c].ravel(), minlength=256) for c in range(x.shape[1])])
    n = counts.sum(axis=1)                                    # (C,)
    mean = counts @ values / n                                # (C,)
    std = np.sqrt(counts @ values ** 2 / n - mean ** 2)       # (C,)
    return mean.reshape(1, -1, 1, 1), std.reshape(1, -1, 1, 1)


def cifar10(root=None, dtype=np.float32):
    """CIFAR-10 from the python batches already on disk: x (50000, 3, 32, 32), y (50000,) int64,
    x_test (10000, 3, 32, 32), y_test. Never downloads.

    Looks in ``root``, ``$MINILOCAL_DATA`` and ``cache_dir() / "cifar10"`` (by default
    ``~/.cache/minilocal/cifar10``), each directly and in the ``cifar-10-batches-py`` folder the
    official archive unpacks to. Inputs are scaled to [0, 1] and standardised per channel with the
    training set's mean and std.
    """
    candidates = _cifar10_candidates(root)
    folder = next((c for c in candidates if all((c / f).is_file() for f in CIFAR10_FILES)), None)
    if folder is None:
        looked = "\n  ".join(str(c) for c in candidates)
        raise FileNotFoundError(
            "cifar10: the CIFAR-10 python batches (data_batch_1..5, test_batch) were not found. "
            f"Looked in:\n  {looked}\nminilocal never downloads. Download cifar-10-python.tar.gz "
            "from https://www.cs.toronto.edu/~kriz/cifar.html, unpack it into one of these folders "
            "(or pass root=... or set MINILOCAL_DATA).")
    train = [read_cifar_batch(folder / f) for f in CIFAR10_FILES[:-1]]
    x, y = np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train])
    x_test, y_test = read_cifar_batch(folder / "test_batch")
    mean, std = _channel_stats(x)

    def standardise(images):
        out = images.astype(dtype)  # in place from here on: the training set is 600 MB in float32
        out /= 255
        out -= mean.astype(dtype)
        out /= std.astype(dtype)
        return out
    return {"x": standardise(x), "y": y, "x_test": standardise(x_test), "y_test": y_test}
