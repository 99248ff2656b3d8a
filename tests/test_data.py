"""Data: MNIST-1D, tensors, CIFAR-10 files on disk, the generated corpus, tokenizer, LM windows."""
import os
import pickle
import re

import numpy as np
import pytest
import torch

from minilocal.data import CIFAR10_FILES, as_tensors, cifar10, mnist1d
from minilocal.text import NOUNS, VERBS, CharTokenizer, lm_dataset, load_text, make_corpus


# --- MNIST-1D and as_tensors -------------------------------------------------------------------
def test_mnist1d_shapes_dtypes_standardised_and_deterministic():
    d = mnist1d()
    assert {k: (v.shape, v.dtype) for k, v in d.items()} == {
        "x": ((4000, 40), np.float32), "y": ((4000,), np.int64),
        "x_test": ((1000, 40), np.float32), "y_test": ((1000,), np.int64)}
    assert abs(float(d["x"].mean())) < 1e-4 and abs(float(d["x"].std()) - 1) < 1e-4
    assert set(np.unique(d["y"])) == set(range(10))
    again = mnist1d()
    assert all(np.array_equal(d[k], again[k]) for k in d)


def test_mnist1d_rejects_tiny_num_samples():
    with pytest.raises(ValueError, match="num_samples must be an int >= 10, got 5"):
        mnist1d(num_samples=5)


def test_as_tensors_keeps_values_and_dtypes():
    data = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)[:, ::2], "y": np.array([3, 1])}
    t = as_tensors(data, device="cpu")
    assert t["x"].dtype == torch.float32 and t["y"].dtype == torch.int64
    assert t["x"].device.type == "cpu"
    assert all(np.array_equal(t[k].numpy(), data[k]) for k in data)


@pytest.mark.parametrize("bad, match", [([1, 2], "data must be a dict"),
                                        ({"x": [1.0]}, r"data\['x'\] must be a numpy array")])
def test_as_tensors_rejects_non_arrays(bad, match):
    with pytest.raises(TypeError, match=match):
        as_tensors(bad)


# --- CIFAR-10 ----------------------------------------------------------------------------------
def write_fake_cifar(folder, n_per_batch=3, seed=0):
    """The official layout, tiny: pickled dicts of b'data' (N, 3072) uint8 and b'labels'."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    raw = {}
    for name in CIFAR10_FILES:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n_per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, f)
        raw[name] = (data, labels)
    return raw


def isolate_cifar_search(monkeypatch, tmp_path):
    monkeypatch.setenv("MINILOCAL_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("MINILOCAL_CACHE", str(tmp_path / "cache"))


def test_cifar10_missing_says_where_it_looked_and_what_to_do(monkeypatch, tmp_path):
    isolate_cifar_search(monkeypatch, tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        cifar10(root=tmp_path / "root")
    message = str(info.value)
    for folder in ["root", "root/cifar-10-batches-py", "env", "env/cifar-10-batches-py",
                   "cache/cifar10", "cache/cifar10/cifar-10-batches-py"]:
        assert str(tmp_path / folder) in message
    assert "never downloads" in message and "cifar-10-python.tar.gz" in message


def test_cifar10_reads_python_batches_and_standardises(monkeypatch, tmp_path):
    isolate_cifar_search(monkeypatch, tmp_path)
    raw = write_fake_cifar(tmp_path / "root" / "cifar-10-batches-py")
    d = cifar10(root=tmp_path / "root")
    train = np.concatenate([raw[f][0] for f in CIFAR10_FILES[:-1]]).reshape(-1, 3, 32, 32) / 255
    test = raw["test_batch"][0].reshape(-1, 3, 32, 32) / 255
    mean, std = train.mean(axis=(0, 2, 3), keepdims=True), train.std(axis=(0, 2, 3), keepdims=True)
    assert d["x"].shape == (15, 3, 32, 32) and d["x"].dtype == np.float32
    np.testing.assert_allclose(d["x"], (train - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d["x_test"], (test - mean) / std, rtol=1e-5, atol=1e-5)
    assert d["y"].dtype == np.int64
    assert d["y"].tolist() == [v for f in CIFAR10_FILES[:-1] for v in raw[f][1]]
    assert d["y_test"].tolist() == raw["test_batch"][1]


def test_cifar10_found_through_the_environment_and_needs_every_file(monkeypatch, tmp_path):
    isolate_cifar_search(monkeypatch, tmp_path)
    write_fake_cifar(tmp_path / "env")
    assert cifar10()["x_test"].shape == (3, 3, 32, 32)
    (tmp_path / "env" / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="test_batch"):
        cifar10()


# --- the generated corpus -----------------------------------------------------------------------
def test_corpus_is_deterministic_and_has_n_lines():
    a, b, c = make_corpus(300, seed=1), make_corpus(300, seed=1), make_corpus(300, seed=2)
    assert a == b and a != c
    assert a.endswith("\n") and a.count("\n") == 300


def test_arithmetic_lines_are_correct_sums_with_carries():
    lines = make_corpus(500, seed=0, kind="arithmetic", max_digits=3).splitlines()
    parsed = [re.fullmatch(r"(\d{1,3})\+(\d{1,3})=(\d+)", line) for line in lines]
    assert all(parsed), [l for l, p in zip(lines, parsed) if not p][:3]
    sums = [(int(m[1]), int(m[2]), int(m[3])) for m in parsed]
    assert all(a + b == c for a, b, c in sums)
    assert any(len(str(c)) > max(len(str(a)), len(str(b))) for a, b, c in sums)  # a carry out


def test_grammar_lines_agree_in_number():
    lines = make_corpus(300, seed=0, kind="grammar").splitlines()
    for line in lines:
        words = line.rstrip(".").split()
        noun_at = next(i for i, w in enumerate(words) if w in NOUNS or w[:-1] in NOUNS
                       or (w.endswith("es") and w[:-2] in NOUNS))
        subject, verb = words[noun_at], words[noun_at + 1]
        plural = subject not in NOUNS
        assert (verb in VERBS) == plural and (plural or verb[:-1] in VERBS), line
    assert len({line.split()[0] for line in lines}) > 1
    text = " ".join(lines)
    assert "foxes" in text and "foxs" not in text  # plurals spelled right


def test_mixed_corpus_has_both_kinds():
    lines = make_corpus(200, seed=0).splitlines()
    n_sums = sum("=" in line for line in lines)
    assert 50 < n_sums < 150


@pytest.mark.parametrize("kwargs, match", [({"n_lines": 0}, "n_lines must be an int >= 1"),
                                           ({"kind": "poems"}, "kind must be one of"),
                                           ({"max_digits": 0}, r"max_digits must be between 1 and 18")])
def test_corpus_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_corpus(**{"n_lines": 10, **kwargs})


# --- tokenizer ----------------------------------------------------------------------------------
def test_tokenizer_round_trip_and_vocabulary():
    text = make_corpus(200, seed=3)
    tok = CharTokenizer(text)
    assert tok.chars == sorted(set(text)) and tok.vocab_size == len(set(text))
    ids = tok.encode(text)
    assert ids.dtype == np.int64 and ids.shape == (len(text),)
    assert tok.decode(ids) == text
    assert tok.decode(torch.from_numpy(ids[:20])) == text[:20]
    assert tok.decode(list(ids[:5])) == text[:5]
    assert tok.encode("").shape == (0,) and tok.decode([]) == ""


def test_tokenizer_errors_name_the_problem():
    tok = CharTokenizer("ab\n")
    with pytest.raises(ValueError, match=r"character 'Z' at position 2 is not in the vocabulary"):
        tok.encode("abZ")
    with pytest.raises(ValueError, match=r"id 3 is outside the vocabulary \[0, 2\]"):
        tok.decode([0, 3])
    with pytest.raises(ValueError, match="1-D sequence of ints"):
        tok.decode(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="got an empty str"):
        CharTokenizer("")


# --- LM windows ---------------------------------------------------------------------------------
def test_lm_dataset_by_hand():
    x, y = lm_dataset(np.arange(10), block_size=3)
    assert x.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert y.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    x, y = lm_dataset(list(range(10)), block_size=3, stride=1)
    assert x.shape == y.shape == (7, 3) and x.dtype == y.dtype == np.int64
    assert x[-1].tolist() == [6, 7, 8] and y[-1].tolist() == [7, 8, 9]


def test_lm_dataset_targets_are_the_next_characters():
    text = make_corpus(50, seed=0)
    tok = CharTokenizer(text)
    x, y = lm_dataset(tok.encode(text), block_size=16)
    assert np.array_equal(x[:, 1:], y[:, :-1])
    assert tok.decode(x[1]) == text[16:32] and tok.decode(y[1]) == text[17:33]


@pytest.mark.parametrize("ids, kwargs, match", [
    (np.arange(3), {"block_size": 3}, "3 ids are too few for one window of block_size 3"),
    (np.arange(9), {"block_size": 0}, "block_size must be an int >= 1"),
    (np.arange(9), {"block_size": 2, "stride": 0}, "stride must be an int >= 1"),
    (np.zeros((2, 5), dtype=np.int64), {"block_size": 2}, "ids must be a 1-D integer array"),
    (np.zeros(9), {"block_size": 2}, "ids must be a 1-D integer array"),
])
def test_lm_dataset_rejects_bad_input(ids, kwargs, match):
    with pytest.raises(ValueError, match=match):
        lm_dataset(ids, **kwargs)


# --- a user's text file -------------------------------------------------------------------------
def test_load_text_reads_utf8(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("héllo wörld\n", encoding="utf-8")
    assert load_text(path) == "héllo wörld\n" and load_text(str(path)) == "héllo wörld\n"


def test_load_text_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'.*missing\.txt' does not exist"):
        load_text(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match="is a folder, not a file"):
        load_text(tmp_path)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        load_text(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        load_text(tmp_path / "latin1.txt")


# --- files that verify themselves --------------------------------------------------------------
def test_a_corrupt_mnist1d_cache_is_reported_with_its_path_and_regenerated(monkeypatch, tmp_path):
    from minilocal import data

    monkeypatch.setenv("MINILOCAL_CACHE", str(tmp_path))
    data._mnist1d_arrays.cache_clear()
    fresh = data._mnist1d_arrays(100, 3)
    (path,) = tmp_path.glob("mnist1d-*.npz")
    intact = path.read_bytes()
    for damage in (intact[:len(intact) // 2], intact[:-300] + bytes(300), b""):
        path.write_bytes(damage)
        data._mnist1d_arrays.cache_clear()
        with pytest.warns(RuntimeWarning, match=re.escape(f"the cached data {path} is corrupt")):
            again = data._mnist1d_arrays(100, 3)
        assert all(np.array_equal(again[k], fresh[k]) for k in fresh)
        data._mnist1d_arrays.cache_clear()
        assert all(np.array_equal(data._mnist1d_arrays(100, 3)[k], fresh[k]) for k in fresh)
    data._mnist1d_arrays.cache_clear()


def test_a_write_killed_midway_leaves_a_temporary_that_the_next_write_removes(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from minilocal.data import atomic_write

    target = tmp_path / "results.json"
    writer = subprocess.Popen([sys.executable, "-c", (
        "import time; from minilocal.data import atomic_write\n"
        "def slow(tmp):\n"
        "    open(tmp, 'w').write('{\"half\": ')\n"
        "    time.sleep(60)\n"
        f"atomic_write({str(target)!r}, slow)\n")])
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("results.json.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.05)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    (stale,) = tmp_path.glob("results.json.*.tmp")
    assert not target.exists()
    live = tmp_path / f"results.json.{os.getpid()}.other.tmp"  # a live writer's: kept
    live.write_text("in progress")
    atomic_write(target, lambda tmp: open(tmp, "w").write("{}"))
    assert target.read_text() == "{}" and not stale.exists() and live.exists()


def write_fake_cifar_bin(folder, raw):
    folder.mkdir(parents=True)
    for name in CIFAR10_FILES:
        data, labels = raw[name]
        records = np.concatenate([np.asarray(labels, np.uint8)[:, None], data], axis=1)
        (folder / f"{name}.bin").write_bytes(records.tobytes())


def test_cifar10_binary_version_equals_the_python_version(monkeypatch, tmp_path):
    isolate_cifar_search(monkeypatch, tmp_path)
    raw = write_fake_cifar(tmp_path / "py" / "cifar-10-batches-py")
    write_fake_cifar_bin(tmp_path / "bin" / "cifar-10-batches-bin", raw)
    from_py, from_bin = cifar10(root=tmp_path / "py"), cifar10(root=tmp_path / "bin")
    assert all(np.array_equal(from_py[k], from_bin[k]) for k in from_py)


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_python_batches_of_any_protocol_load_but_code_never_runs(monkeypatch, tmp_path,
                                                                        protocol):
    from minilocal.data import read_cifar_batch

    images = np.arange(2 * 3072, dtype=np.uint32).astype(np.uint8).reshape(2, 3072)
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": images, b"labels": [3, 4]}, protocol=protocol))
    x, y = read_cifar_batch(path)
    assert np.array_equal(x.reshape(2, -1), images) and y.tolist() == [3, 4]

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'ran'}",)
    path.write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}, protocol=protocol))
    with pytest.raises(ValueError, match=r"asks for \w+\.system, which a data file never needs"):
        read_cifar_batch(path)
    assert not (tmp_path / "ran").exists()
