"""Offline, deterministic data as dicts of numpy arrays; nothing is ever downloaded.

MNIST-1D (Greydanus 2020): 10 classes of 1-D signals of length 40, 4000 train / 1000 test,
generated procedurally. Generation takes ~2 s, so the arrays are cached in memory and under
~/.cache/minilocal. CIFAR-10 is read only when its files are already on disk. ``as_tensors``
turns any of these dicts into torch tensors.
"""
from __future__ import annotations

import functools
import glob
import hashlib
import os
import pickle
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import DTypeLike

from .validate import check_int

if TYPE_CHECKING:  # torch is imported only where tensors are made
    import torch


def cache_dir() -> Path:
    """Where generated data is cached: $MINILOCAL_CACHE or ~/.cache/minilocal."""
    return Path(os.environ.get("MINILOCAL_CACHE", Path.home() / ".cache" / "minilocal"))


def _stale_temporaries(path):
    """Temporary files of earlier writes to ``path`` whose writer is gone (killed mid-write)."""
    for tmp in path.parent.glob(f"{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 1:].split(".")[0]
        if pid.isdigit() and not _alive(int(pid)):
            yield tmp


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], object]) -> None:
    """``write(tmp_path)`` to a temporary file beside ``path``, then rename it over ``path``: a
    reader sees the old file or the new one, never half of one. A failed write removes its
    temporary file; one left by a killed writer is removed by the next write to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for tmp in _stale_temporaries(path):
        tmp.unlink(missing_ok=True)
    # the writer's pid in the name tells a stale temporary from another writer's live one
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.{os.getpid()}.",
                               suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:  # on power loss the rename could otherwise land before the data
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; caches and results are shared files
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def check_writable(path: str | os.PathLike[str], what: str, example: str = "run.pt") -> None:
    """Raise OSError naming ``what`` unless a file can be written at ``path`` (checked before a
    long run, so that its results are not lost at the end)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{what}: {str(path)!r} is a folder; give a file path inside it, "
                                f"e.g. {str(path / example)!r}")
    above = next(a for a in path.absolute().parents if a.exists())  # "/" exists
    if not above.is_dir():
        raise NotADirectoryError(f"{what}: cannot write {str(path)!r}: {str(above)!r} is a file, "
                                 f"not a folder; choose another path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OSError(f"{what}: cannot write {str(path)!r} ({e.strerror or e}); choose a path in "
                      f"a folder you can write to") from None


MNIST1D_KEYS = ("x", "y", "x_test", "y_test")


def _read_mnist1d_cache(path, num_samples):
    """The cached arrays, checked: every key, matching lengths, the expected total."""
    with np.load(path) as f:  # allow_pickle stays False: a cache holds arrays only
        arrays = {k: f[k] for k in MNIST1D_KEYS}  # reading each member checks its CRC-32
    n_train, n_test = len(arrays["x"]), len(arrays["x_test"])
    x, x_test = arrays["x"], arrays["x_test"]
    if (n_train + n_test != num_samples or len(arrays["y"]) != n_train
            or len(arrays["y_test"]) != n_test or x.shape[1:] != x_test.shape[1:]
            or x.ndim != 2 or not np.isfinite(x).all()):
        raise ValueError(f"shapes {[arrays[k].shape for k in MNIST1D_KEYS]} do not make "
                         f"{num_samples} MNIST-1D examples")
    return arrays


@functools.lru_cache(maxsize=4)
def _mnist1d_arrays(num_samples, seed):
    key = hashlib.sha1(f"mnist1d-v1-{num_samples}-{seed}".encode()).hexdigest()[:12]
    path = cache_dir() / f"mnist1d-{key}.npz"
    if path.exists():
        try:
            return _read_mnist1d_cache(path, num_samples)
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
            warnings.warn(f"mnist1d: the cached data {path} is corrupt ({type(e).__name__}: {e}); "
                          f"generating it again", RuntimeWarning, stacklevel=3)
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    raw = make_dataset(args)  # procedural: no network
    arrays = {k: raw[k] for k in MNIST1D_KEYS}

    def save(tmp):
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, **arrays)

    try:
        atomic_write(path, save)
    except OSError:
        pass  # a read-only home still gets the data, just not cached
    return arrays


def mnist1d(num_samples: int = 5000, seed: int = 42,
            dtype: DTypeLike = np.float32) -> dict[str, np.ndarray]:
    """MNIST-1D as a dict of arrays: x (N, 40), y (N,) int64, x_test, y_test (80/20 split).

    Inputs are standardised with the training set's mean and std.
    """
    check_int("mnist1d", "num_samples", num_samples, 10)
    raw = _mnist1d_arrays(num_samples, seed)
    mean, std = raw["x"].mean(), raw["x"].std()
    return {"x": ((raw["x"] - mean) / std).astype(dtype), "y": raw["y"].astype(np.int64),
            "x_test": ((raw["x_test"] - mean) / std).astype(dtype),
            "y_test": raw["y_test"].astype(np.int64)}


def as_tensors(data: dict[str, np.ndarray],
               device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
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
CIFAR10_BIN_FILES = [f"{name}.bin" for name in CIFAR10_FILES]
CIFAR10_FIX = ("download and unpack cifar-10-binary.tar.gz (or cifar-10-python.tar.gz) from "
               "https://www.cs.toronto.edu/~kriz/cifar.html again")


def _cifar10_candidates(root):
    """Folders that may hold the batches, in the order they are searched."""
    bases = [Path(root)] if root is not None else []
    if os.environ.get("MINILOCAL_DATA"):
        bases.append(Path(os.environ["MINILOCAL_DATA"]))
    bases.append(cache_dir() / "cifar10")
    return [folder for base in bases
            for folder in (base, base / "cifar-10-batches-py", base / "cifar-10-batches-bin")]


def read_cifar_bin(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch (records of 1 label byte + 3072 pixel bytes): x (N, 3, 32, 32)
    uint8, y (N,) int64. Raw bytes only: nothing in the file is executed."""
    raw = np.fromfile(path, dtype=np.uint8)
    if not raw.size or raw.size % 3073:
        raise ValueError(f"cifar10: {path} has {raw.size} bytes, not a whole number of 3073-byte "
                         f"records (a label byte and 3072 pixels): it is truncated or not a "
                         f"CIFAR-10 binary batch; {CIFAR10_FIX}")
    records = raw.reshape(-1, 3073)                                   # (N, 1 + 3 * 32 * 32)
    return _checked_batch(path, records[:, 1:], records[:, 0])


# The python batches are pickles: only these names may be looked up while reading one (numpy's
# array reconstruction in its old and new module paths; nothing that can run other code).
CIFAR_PICKLE_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # how Python 3 writes bytes in protocol 2
}


def _latin1(text, encoding="latin1"):
    """``_codecs.encode`` as protocol-2 pickles use it: str -> bytes, latin-1 only."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not array data")
    return text.encode("latin1")


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a function or class that ArrayUnpickler does not admit."""


class ArrayUnpickler(pickle.Unpickler):
    """An unpickler for data files: numpy arrays, lists, dicts, bytes, numbers and nothing else."""

    def find_class(self, module: str, name: str) -> Callable[..., Any]:
        if (module, name) not in CIFAR_PICKLE_GLOBALS:
            raise RefusedGlobal(f"the file asks for {module}.{name}, which a data file "
                                         f"never needs; it was refused, not run")
        if (module, name) == ("_codecs", "encode"):
            return _latin1
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")  # numpy 2's name
        return super().find_class(module, name)


def read_cifar_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch: x (N, 3, 32, 32) uint8, y (N,) int64, read by ArrayUnpickler."""
    try:
        with open(path, "rb") as f:
            batch = ArrayUnpickler(f, encoding="bytes").load()  # the official files: Python 2
    except RefusedGlobal as e:
        raise ValueError(f"cifar10: {path} is not a CIFAR-10 python batch: {e}; {CIFAR10_FIX}") \
            from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError) as e:
        raise ValueError(f"cifar10: {path} is truncated or corrupt ({type(e).__name__}: {e}); "
                         f"{CIFAR10_FIX}") from None
    if not isinstance(batch, dict) or not {b"data", b"labels"} <= set(batch):
        raise ValueError(f"cifar10: {path} holds no b'data' and b'labels' entries: not a CIFAR-10 "
                         f"python batch; {CIFAR10_FIX}")
    return _checked_batch(path, batch[b"data"], batch[b"labels"])


def _checked_batch(path, data, labels):
    """x (N, 3, 32, 32) uint8 and y (N,) int64 from a batch's pixels (N, 3072) and labels."""
    data, labels = np.asarray(data), np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 \
            or labels.shape != (len(data),) or labels.dtype.kind not in "iu" \
            or (labels.size and not 0 <= labels.min() <= labels.max() <= 9):
        span = f" from {labels.min()} to {labels.max()}" if labels.size and \
            labels.dtype.kind in "iu" else ""
        raise ValueError(f"cifar10: {path} does not hold CIFAR-10 images (N, 3072) uint8 with N "
                         f"labels in 0..9 (got pixels {data.shape} {data.dtype}, labels "
                         f"{labels.shape} {labels.dtype}{span}); {CIFAR10_FIX}")
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32)), labels.astype(np.int64)


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


def cifar10(root: str | os.PathLike[str] | None = None,
            dtype: DTypeLike = np.float32) -> dict[str, np.ndarray]:
    """CIFAR-10 from batches already on disk: x (50000, 3, 32, 32), y (50000,) int64,
    x_test (10000, 3, 32, 32), y_test. Never downloads.

    Looks in ``root``, ``$MINILOCAL_DATA`` and ``cache_dir() / "cifar10"`` (by default
    ``~/.cache/minilocal/cifar10``), each directly and in the ``cifar-10-batches-bin`` and
    ``cifar-10-batches-py`` folders the official archives unpack to. The binary version is read as
    raw bytes; the python version's pickles through ``ArrayUnpickler``, which refuses anything but
    arrays. Inputs are scaled to [0, 1] and standardised per channel with the training set's mean
    and std.
    """
    candidates = _cifar10_candidates(root)
    found = next(((c, files, reader) for c in candidates
                  for files, reader in ((CIFAR10_BIN_FILES, read_cifar_bin),
                                        (CIFAR10_FILES, read_cifar_batch))
                  if all((c / f).is_file() for f in files)), None)
    if found is None:
        looked = "\n  ".join(str(c) for c in candidates)
        raise FileNotFoundError(
            "cifar10: the CIFAR-10 batches (data_batch_1..5 and test_batch, .bin or python) were "
            f"not found. Looked in:\n  {looked}\nminilocal never downloads. Download "
            "cifar-10-binary.tar.gz or cifar-10-python.tar.gz from "
            "https://www.cs.toronto.edu/~kriz/cifar.html, unpack it into one of these folders "
            "(or pass root=... or set MINILOCAL_DATA).")
    folder, files, reader = found
    train = [reader(folder / f) for f in files[:-1]]
    x, y = np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train])
    x_test, y_test = reader(folder / files[-1])
    mean, std = _channel_stats(x)

    def standardise(images):
        out = images.astype(dtype)  # in place from here on: the training set is 600 MB in float32
        out /= 255
        out -= mean.astype(dtype)
        out /= std.astype(dtype)
        return out
    return {"x": standardise(x), "y": y, "x_test": standardise(x_test), "y_test": y_test}
