"""The one batch sampler draws exactly the batches the four samplers it replaced drew.

The oracles: index sequences recorded from the old samplers (fit's, compute.sweep's
``sample_batches``, numpy_core.train's and runtime.ArrayBatches'), and verbatim copies of their
code run over more sizes and seeds. Trained numbers in the notebooks depend on these streams.
"""
import numpy as np
import pytest
import torch

from minilocal import numpy_core as npc
from minilocal.batches import BatchOrder
from minilocal.compute.sweep import sample_batches
from minilocal.runtime import ArrayBatches

RECORDED = {  # (n, batch_size, seed): the first 7 batches
    "torch": {
        (10, 3, 0): [[4, 1, 7], [5, 3, 9], [0, 8, 6], [3, 9, 4], [2, 7, 8], [6, 0, 5], [4, 0, 8]],
        (7, 2, 1): [[0, 6], [1, 3], [5, 2], [0, 6], [1, 3], [2, 4], [5, 6]],
        (5, 5, 3): [[1, 0, 3, 4, 2], [0, 1, 2, 4, 3], [1, 4, 3, 0, 2], [0, 2, 1, 4, 3],
                    [0, 3, 4, 1, 2], [1, 2, 0, 3, 4], [2, 3, 4, 1, 0]],
    },
    "numpy": {
        (10, 3, 0): [[4, 6, 2], [7, 3, 5], [9, 0, 8], [2, 9, 3], [6, 0, 4], [8, 7, 5], [5, 4, 9]],
        (7, 2, 1): [[5, 0], [1, 4], [2, 6], [1, 6], [2, 3], [4, 5], [3, 0]],
        (5, 5, 3): [[4, 2, 1, 3, 0], [3, 0, 2, 1, 4], [0, 1, 4, 2, 3], [4, 3, 0, 1, 2],
                    [4, 2, 0, 1, 3], [2, 4, 1, 3, 0], [4, 2, 3, 0, 1]],
    },
    "numpy-per-epoch": {
        (10, 3, 0): [[4, 6, 2], [7, 3, 5], [9, 0, 8], [9, 1, 3], [8, 7, 6], [0, 4, 2], [8, 2, 1]],
        (7, 2, 1): [[5, 0], [1, 4], [2, 6], [6, 1], [4, 0], [3, 2], [0, 6]],
        (5, 5, 3): [[4, 2, 1, 3, 0], [1, 4, 0, 2, 3], [4, 0, 1, 2, 3], [1, 3, 4, 2, 0],
                    [3, 2, 4, 0, 1], [0, 2, 4, 1, 3], [1, 4, 3, 0, 2]],
    },
}
SIZES = [(10, 3, 0), (7, 2, 1), (5, 5, 3), (64, 16, 7), (100, 32, 2), (33, 1, 5), (4000, 128, 0)]


# verbatim copies of the samplers BatchOrder replaced -----------------------------------------
def old_fit(n, batch_size, seed, steps):  # train.fit
    gen = torch.Generator().manual_seed(seed)
    order, pos, out = torch.randperm(n, generator=gen), 0, []
    for _ in range(steps):
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        out.append(order[pos:pos + batch_size])
        pos += batch_size
    return out


def old_sweep(n, batch, seed):  # compute.sweep.sample_batches
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=g)
        for i in range(0, n - batch + 1, batch):
            yield order[i:i + batch]


def old_numpy(n, batch_size, seed, steps):  # numpy_core.train
    rng = np.random.default_rng(seed)
    order, pos, out = rng.permutation(n), 0, []
    for _ in range(steps):
        if pos + batch_size > n:
            order, pos = rng.permutation(n), 0
        out.append(order[pos:pos + batch_size])
        pos += batch_size
    return out


def old_array(n, batch_size, seed, t):  # runtime.ArrayBatches.__call__
    per_epoch = n // batch_size
    epoch, i = divmod(t, per_epoch)
    order = np.random.default_rng((seed, epoch)).permutation(n)
    return order[i * batch_size:(i + 1) * batch_size]


def steps_for(n, batch_size):
    return 3 * (n // batch_size) + 2  # three epochs and into the fourth


@pytest.mark.parametrize("mode", sorted(RECORDED))
def test_recorded_sequences(mode):
    for (n, b, seed), want in RECORDED[mode].items():
        order = BatchOrder(n, b, seed, mode=mode)
        assert [next(order).tolist() for _ in want] == want
        if mode == "numpy-per-epoch":
            assert [order.at(t).tolist() for t in range(len(want))] == want


@pytest.mark.parametrize("n, b, seed", SIZES)
def test_modes_equal_the_old_samplers_bitwise(n, b, seed):
    k = steps_for(n, b)
    torch_order, numpy_order = BatchOrder(n, b, seed), BatchOrder(n, b, seed, mode="numpy")
    sweep = old_sweep(n, b, seed)
    for old, new in zip(old_fit(n, b, seed, k), (next(torch_order) for _ in range(k))):
        assert new.dtype == old.dtype == torch.int64 and torch.equal(new, old)
        assert torch.equal(next(sweep), old)
    for old in old_numpy(n, b, seed, k):
        new = next(numpy_order)
        assert new.dtype == old.dtype and np.array_equal(new, old)
    per_epoch = BatchOrder(n, b, seed, mode="numpy-per-epoch")
    for t in range(k):
        assert np.array_equal(per_epoch.at(t), old_array(n, b, seed, t))
        assert np.array_equal(next(per_epoch), old_array(n, b, seed, t))


@pytest.mark.parametrize("n, b, seed", SIZES[:5])
def test_callers_draw_the_old_batches(n, b, seed):
    k = steps_for(n, b)
    new = sample_batches(n, b, seed)
    assert all(torch.equal(next(new), old) for old in old_fit(n, b, seed, k))
    x = np.arange(n, dtype=np.int64)
    arrays = ArrayBatches(x, x * 10, b, seed)
    for t in range(k):
        xb, yb = arrays(t)
        assert np.array_equal(xb.numpy(), old_array(n, b, seed, t))
        assert np.array_equal(yb.numpy(), 10 * old_array(n, b, seed, t))


def test_numpy_train_draws_the_old_batches(monkeypatch):
    seen = []
    real = npc.train.__globals__["local_grads"]

    def spy(params, x, y, plan, activation="relu"):
        seen.append(x[:, 0].copy())
        return real(params, x, y, plan, activation)

    from minilocal import Plan
    plan = Plan.greedy(2)
    params = npc.init_mlp(plan, d_in=3, width=4, n_classes=2, seed=0)
    x = np.arange(30, dtype=np.float64)[:, None] * np.ones(3)  # row i holds i: the index itself
    data = {"x": x, "y": np.arange(30) % 2, "x_test": x[:4], "y_test": np.arange(4) % 2}
    monkeypatch.setitem(npc.train.__globals__, "local_grads", spy)
    npc.train(params, plan, data, steps=9, batch_size=8, seed=4, progress=False)
    want = old_numpy(30, 8, 4, 9)
    assert [s.astype(np.int64).tolist() for s in seen] == [w.tolist() for w in want]


def test_state_restored_continues_the_sequence():
    a = BatchOrder(10, 3, seed=2)
    for _ in range(4):
        next(a)
    b = BatchOrder(10, 3, seed=9)
    b.generator.set_state(a.generator.get_state())
    b.order, b.pos, b.epoch = a.order, a.pos, a.epoch
    assert all(torch.equal(next(a), next(b)) for _ in range(8))


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode must be one of"):
        BatchOrder(10, 3, mode="jax")
    with pytest.raises(ValueError, match="batch_size 11 is larger than the 10 examples"):
        BatchOrder(10, 11)
    with pytest.raises(ValueError, match="only by next"):
        BatchOrder(10, 3).at(0)
