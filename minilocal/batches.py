"""The one batch sampler of every training loop: ``BatchOrder``, shuffled epochs of index batches.

Each epoch is a fresh shuffle of the n examples cut into batches of B; the last n % B examples of
an epoch's order are not used (every batch is full). Where the shuffles come from is the ``mode``.
The modes draw different random streams, and each loop keeps the stream it has always had, so a
run with a given seed sees exactly the batches it always saw:

- ``"torch"``: one ``torch.Generator`` seeded with ``seed`` draws ``torch.randperm(n)`` for each
  epoch in turn; batches are int64 tensors. Used by ``train.fit`` and ``compute.sweep``.
- ``"numpy"``: one ``np.random.default_rng(seed)`` draws ``permutation(n)`` for each epoch in
  turn; batches are NumPy arrays. Used by ``numpy_core.train``.
- ``"numpy-per-epoch"``: epoch e is shuffled by its own ``np.random.default_rng((seed, e))``, so
  batch t follows from (seed, t) alone: ``at(t)`` computes it without drawing the batches before
  it. Used by ``runtime.ArrayBatches``, where every process regenerates batch t itself.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .validate import check_choice, check_int

if TYPE_CHECKING:
    import torch

MODES = ("torch", "numpy", "numpy-per-epoch")


class BatchOrder:
    """Endless index batches (B,) over n examples, epoch by epoch (an iterator: ``next(order)``).

    The state that decides every later batch is ``order`` (this epoch's shuffle), ``pos`` (where
    the next batch starts in it), ``epoch`` and ``generator`` (the stream modes' generator): a
    checkpoint that saves and restores them continues the same sequence.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, mode: str = "torch",
                 where: str = "BatchOrder") -> None:
        check_choice(where, "mode", mode, MODES)
        check_int(where, "the number of examples", n, 1)
        check_int(where, "batch_size", batch_size, 1)
        if batch_size > n:
            raise ValueError(f"{where}: batch_size {batch_size} is larger than the {n} examples; "
                             f"use a batch_size <= {n}")
        self.n, self.batch_size, self.seed, self.mode = n, batch_size, seed, mode
        if mode == "torch":  # imported here: the NumPy lessons never load torch
            import torch
        self.generator = (torch.Generator().manual_seed(seed) if mode == "torch" else
                          np.random.default_rng(seed) if mode == "numpy" else None)
        self.epoch, self.order, self.pos = 0, self._shuffle(0), 0

    def _shuffle(self, epoch: int) -> torch.Tensor | np.ndarray:
        if self.mode == "torch":
            import torch

            return torch.randperm(self.n, generator=self.generator)
        if self.mode == "numpy":
            return self.generator.permutation(self.n)
        return np.random.default_rng((self.seed, epoch)).permutation(self.n)

    def __iter__(self) -> BatchOrder:
        return self

    def __next__(self) -> torch.Tensor | np.ndarray:
        if self.pos + self.batch_size > self.n:  # a new epoch only when a batch is asked for
            self.epoch, self.pos = self.epoch + 1, 0
            self.order = self._shuffle(self.epoch)
        idx = self.order[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def at(self, t: int) -> np.ndarray:
        """Batch t (counting from 0) directly; ``"numpy-per-epoch"`` mode only."""
        if self.mode != "numpy-per-epoch":
            raise ValueError(f"BatchOrder.at: mode {self.mode!r} draws its epochs one after the "
                             f"other, so batch t is reached only by next(); use mode "
                             f"'numpy-per-epoch' for batches by step number")
        epoch, i = divmod(t, self.n // self.batch_size)
        return self._shuffle(epoch)[i * self.batch_size:(i + 1) * self.batch_size]
