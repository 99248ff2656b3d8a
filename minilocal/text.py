"""Text for the character LM: a generated corpus, a character tokenizer and (x, y) windows.

The corpus is offline and deterministic. It mixes two kinds of line: additions with carries
("123+989=1112") and sentences of a small grammar whose verb agrees with its subject ("the small
cats chase a dog."). A tiny Transformer learns the format and the agreement in a few hundred
steps and the carries much later, so the loss keeps falling for a long time.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .validate import check_choice, check_int

if TYPE_CHECKING:  # text.py works without torch; decode also takes tensors
    import torch

KINDS = ("arithmetic", "grammar", "mixed")
NOUNS = ("cat", "dog", "bird", "fox", "frog", "horse", "robot", "farmer")
VERBS = ("see", "chase", "like", "follow", "find", "help")
ADJECTIVES = ("small", "big", "red", "quick", "lazy", "tall")  # no vowel first, so "a" fits
PLACES = ("near the river", "in the garden", "under a tree", "at night")
SINGULAR_DETS, PLURAL_DETS = ("the", "a", "every"), ("the", "some", "two")


def _arithmetic_line(rng, max_digits):
    a, b = (int(rng.integers(0, 10 ** int(rng.integers(1, max_digits + 1)))) for _ in range(2))
    return f"{a}+{b}={a + b}"


def _noun_phrase(rng):
    plural = bool(rng.integers(2))
    words = [str(rng.choice(PLURAL_DETS if plural else SINGULAR_DETS))]
    if rng.random() < 0.5:
        words.append(str(rng.choice(ADJECTIVES)))
    noun = str(rng.choice(NOUNS))
    words.append(noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s") if plural else noun)
    return " ".join(words), plural


def _grammar_line(rng):
    subject, plural = _noun_phrase(rng)
    verb = str(rng.choice(VERBS))
    verb = verb if plural else verb + "s"  # agreement: a plural subject takes the bare verb
    obj, _ = _noun_phrase(rng)
    place = f" {rng.choice(PLACES)}" if rng.random() < 0.3 else ""
    return f"{subject} {verb} {obj}{place}."


def make_corpus(n_lines: int = 2000, seed: int = 0, kind: str = "mixed",
                max_digits: int = 3) -> str:
    """``n_lines`` lines joined by newlines (a str ending in one); same seed, same text.

    kind: "arithmetic" (a+b=c with up to ``max_digits`` digits per operand), "grammar", or "mixed"
    (each line either, with equal odds).
    """
    check_int("make_corpus", "n_lines", n_lines, 1)
    check_choice("make_corpus", "kind", kind, KINDS)
    check_int("make_corpus", "max_digits", max_digits, 1, 18)
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n_lines):
        arithmetic = kind == "arithmetic" or (kind == "mixed" and rng.random() < 0.5)
        lines.append(_arithmetic_line(rng, max_digits) if arithmetic else _grammar_line(rng))
    return "\n".join(lines) + "\n"


class CharTokenizer:
    """Characters <-> integer ids; the vocabulary is the sorted set of characters of ``text``."""

    def __init__(self, text: str) -> None:
        if not isinstance(text, str) or not text:
            got = "an empty str" if text == "" else f"a {type(text).__name__}"
            raise ValueError(f"CharTokenizer: text must be a non-empty str to build the vocabulary "
                             f"from, got {got}")
        self.chars = sorted(set(text))
        self._ids = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """str of N characters -> ids (N,) int64."""
        if not isinstance(text, str):
            raise TypeError(f"CharTokenizer.encode: text must be a str, got {type(text).__name__}")
        try:
            return np.fromiter((self._ids[c] for c in text), dtype=np.int64, count=len(text))
        except KeyError:
            i, c = next((i, c) for i, c in enumerate(text) if c not in self._ids)
            raise ValueError(f"CharTokenizer.encode: character {c!r} at position {i} is not in the "
                             f"vocabulary of {self.vocab_size} characters {''.join(self.chars)!r}; "
                             f"build the tokenizer from text that contains it") from None

    def decode(self, ids: Sequence[int] | np.ndarray | torch.Tensor) -> str:
        """ids (N,) (list, numpy array or torch tensor) -> str of N characters."""
        ids = np.asarray(ids.tolist() if hasattr(ids, "tolist") else ids)
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise ValueError(f"CharTokenizer.decode: ids must be a 1-D sequence of ints, got shape "
                             f"{ids.shape} and dtype {ids.dtype}; decode one row at a time")
        bad = ids[(ids < 0) | (ids >= self.vocab_size)]
        if bad.size:
            raise ValueError(f"CharTokenizer.decode: id {int(bad[0])} is outside the vocabulary "
                             f"[0, {self.vocab_size - 1}]")
        return "".join(self.chars[i] for i in ids)

    def __repr__(self):
        return f"CharTokenizer(vocab_size={self.vocab_size}, chars={''.join(self.chars)!r})"


def lm_dataset(ids: Sequence[int] | np.ndarray, block_size: int,
               stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Next-character windows: ids (N,) -> x, y (M, block_size) int64, y = x shifted by one.

    Window i starts at ``i * stride`` (default ``block_size``: windows do not overlap).
    """
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise ValueError(f"lm_dataset: ids must be a 1-D integer array (tokenizer.encode(text)), "
                         f"got shape {ids.shape} and dtype {ids.dtype}")
    check_int("lm_dataset", "block_size", block_size, 1)
    stride = check_int("lm_dataset", "stride", block_size if stride is None else stride, 1)
    if len(ids) < block_size + 1:
        raise ValueError(f"lm_dataset: {len(ids)} ids are too few for one window of block_size "
                         f"{block_size} plus its target; use more text or a smaller block_size")
    windows = np.lib.stride_tricks.sliding_window_view(ids, block_size + 1)[::stride]  # (M, T+1)
    return windows[:, :-1].astype(np.int64), windows[:, 1:].astype(np.int64)


def load_text(path: str | os.PathLike[str]) -> str:
    """The contents of a UTF-8 text file as a str (your own corpus for the LM)."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"load_text: {str(path)!r} {what} (absolute path: "
                                f"{path.resolve()}); pass the path of a UTF-8 text file, or use "
                                f"make_corpus() instead")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"load_text: {str(path)!r} is not UTF-8 text ({e}); save it as "
                         f"UTF-8") from None
    if not text:
        raise ValueError(f"load_text: {str(path)!r} is empty; the LM needs some text to learn from")
    if "\x00" in text:  # valid UTF-8, but no text file holds NUL characters: a binary file
        raise ValueError(f"load_text: {str(path)!r} contains NUL characters ({text.count(chr(0))} "
                         f"of {len(text)}, the first at position {text.index(chr(0))}): it is a "
                         f"binary file, not text; pass a UTF-8 text file")
    return text
