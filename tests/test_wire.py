"""The layout of a stage message (runtime/wire.py): packed and unpacked messages round-trip
bitwise, every part starts aligned, and a message that does not match batch 0's layout is
refused with an error naming the part, the step and both shapes or dtypes."""
import functools
import math
from dataclasses import dataclass

import pytest
import torch

from minilocal import Plan, models
from minilocal.runtime import Job, ModelSpec, RandomBatches, WorkerError, run_distributed, sgd
from minilocal.runtime.wire import ALIGN, PACK_BYTES, MessageLayout, strides

PARTS = [((3, 5), torch.float32), ((3,), torch.int64), ((2, 1, 3), torch.float64),
         ((7,), torch.bool), ((4,), torch.bfloat16), ((), torch.int32), ((2, 2), torch.float16),
         ((3,), torch.complex64), ((5,), torch.uint8)]
NAMES = [f"part{i}" for i in range(len(PARTS))]


def as_bits(t):
    """The tensor's bytes, as a uint8 tensor (NaN payloads and -0.0 included)."""
    return t.reshape(-1).view(torch.uint8) if t.dtype != torch.bool else t.reshape(-1)


def awkward(shape, dtype, g):
    """Values a conversion through float would change: int64 beyond 2**53, NaN, -0.0."""
    if dtype == torch.int64:
        return torch.tensor([2 ** 62 + 1, -2 ** 63, 2 ** 53 + 1][:math.prod(shape)],
                            dtype=dtype).reshape(shape)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype in (torch.int32, torch.uint8):
        return torch.randint(0, 200, shape, generator=g, dtype=dtype)
    if dtype.is_complex:
        return torch.randn(shape, generator=g, dtype=dtype)
    t = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    flat = t.reshape(-1)
    flat[0] = float("nan")
    if flat.numel() > 1:
        flat[1] = -0.0
    return t


@pytest.mark.parametrize("pack_bytes", [PACK_BYTES, 0], ids=["packed", "unpacked"])
def test_message_round_trips_bitwise(pack_bytes):
    g = torch.Generator().manual_seed(0)
    parts = PARTS if pack_bytes else [p for p in PARTS if not p[1].is_complex]
    layout = MessageLayout("stage 0's activation message", parts, NAMES[:len(parts)], "cpu",
                           pack_bytes)
    assert layout.packed == bool(pack_bytes)
    sent = [awkward(shape, dtype, g) for shape, dtype in parts]
    for _ in range(3):  # the packed send buffers are reused: each message must still be exact
        bufs, token = layout.pack(sent, step=0)
        received = layout.empty()
        assert len(received) == len(bufs)
        for buf, into in zip(bufs, received):
            into.copy_(buf)  # what a send and a receive do, byte for byte
        layout.release(token)
        got = layout.unpack(received)
        assert len(got) == len(sent)
        for a, b, (shape, dtype) in zip(got, sent, parts):
            assert a.dtype == dtype and tuple(a.shape) == shape and a.is_contiguous()
            assert torch.equal(as_bits(a), as_bits(b))
            assert a.data_ptr() % ALIGN == 0  # where a fresh tensor starts: the same numerics
        sent = [awkward(shape, dtype, g) for shape, dtype in parts]  # the next message differs
    if pack_bytes:
        assert len(layout.free) == 1  # one buffer served all three messages


def test_labels_int64_stay_exact_through_a_float32_activation_buffer():
    layout = MessageLayout("m", [((4, 2), torch.float32), ((4,), torch.int64)],
                           ["activation", "labels"], "cpu")
    assert layout.carrier == torch.float32 and layout.spans == [(0, 32), (64, 96)]
    labels = torch.tensor([2 ** 63 - 1, -1, 2 ** 53 + 1, 7])
    (flat,), _ = layout.pack([torch.ones(4, 2), labels])
    h, y = layout.unpack([flat.clone()])
    assert y.tolist() == labels.tolist() and torch.equal(h, torch.ones(4, 2))


def test_a_received_activation_is_an_ordinary_leaf_for_autograd():
    layout = MessageLayout("m", [((4, 3), torch.float32), ((4,), torch.int64)],
                           ["activation", "labels"], "cpu")
    x_ref = torch.randn(4, 3)
    (flat,), _ = layout.pack([x_ref, torch.arange(4)])
    x, _ = layout.unpack([flat.clone()])
    w = torch.randn(3, 2, requires_grad=True)
    x.requires_grad_(True)  # as stage_step does with its input
    (x @ w).square().sum().backward()
    x_ref.requires_grad_(True)
    w_ref = w.detach().clone().requires_grad_(True)
    (x_ref @ w_ref).square().sum().backward()
    assert torch.equal(x.grad, x_ref.grad) and torch.equal(w.grad, w_ref.grad)


def test_a_sender_that_requires_grad_is_packed_without_a_graph():
    layout = MessageLayout("m", [((2, 2), torch.float32), ((2,), torch.int64)], ["a", "b"], "cpu")
    (flat,), (_, views) = layout.pack([torch.ones(2, 2, requires_grad=True), torch.zeros(2)
                                       .long()])
    assert not flat.requires_grad and not any(v.requires_grad for v in views)


def test_large_messages_travel_unpacked_and_small_ones_packed():
    small = MessageLayout("m", [((64, 64), torch.float32), ((64,), torch.int64)], ["a", "b"], "cpu")
    big = MessageLayout("m", [((64, PACK_BYTES // 256 + 1), torch.float32), ((64,), torch.int64)],
                        ["a", "b"], "cpu")
    single = MessageLayout("m", [((64, 64), torch.float32)], ["a"], "cpu")
    assert small.packed and not big.packed and not single.packed
    x = torch.randn(64, 64)
    bufs, token = single.pack([x])
    assert token is None and bufs[0] is x  # no copy for a ready tensor
    assert strides((2, 3, 4)) == (12, 4, 1) and strides(()) == ()


@pytest.mark.parametrize("pack_bytes", [PACK_BYTES, 0], ids=["packed", "unpacked"])
@pytest.mark.parametrize("bad, error, words", [
    ([torch.zeros(8, 15), torch.zeros(8, dtype=torch.int64)], ValueError,
     r"stage 0's activation message of step 3: activation of shape \(8, 15\) where batch 0 "
     r"had \(8, 16\); every batch must have the shapes of batch 0"),
    ([torch.zeros(8, 16), torch.zeros(4, dtype=torch.int64)], ValueError,
     r"step 3: labels of shape \(4,\) where batch 0 had \(8,\)"),
    ([torch.zeros(8, 16), torch.zeros(8, dtype=torch.int32)], TypeError,
     r"step 3: labels of dtype torch.int32 where batch 0 had torch.int64"),
    ([torch.zeros(8, 16)], ValueError,
     r"stage 0's activation message of step 3 has 1 part\(s\), expected 2 \(activation, labels\)"),
], ids=["activation", "labels", "dtype", "count"])
def test_a_message_unlike_batch_0_is_refused_clearly(pack_bytes, bad, error, words):
    layout = MessageLayout("stage 0's activation message",
                           [((8, 16), torch.float32), ((8,), torch.int64)],
                           ["activation", "labels"], "cpu", pack_bytes)
    with pytest.raises(error, match=words):
        layout.pack(bad, step=3)


@dataclass(frozen=True, eq=False)
class ShrinkingBatches(RandomBatches):
    """RandomBatches whose batch ``step`` is half as large."""
    step: int = 2

    def __call__(self, t):
        x, y = super().__call__(t)
        return (x[: len(x) // 2], y[: len(y) // 2]) if t == self.step else (x, y)


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_a_batch_of_another_size_fails_on_the_sending_stage_with_the_layout_error():
    torch.set_num_threads(1)
    job = Job(ModelSpec(models.mlp, {"width": 16}), Plan.greedy(2), ShrinkingBatches(8),
              functools.partial(sgd, lr=0.1), n_steps=4)
    with pytest.raises(WorkerError, match=r"^distributed run failed: stage 0 raised ValueError: "
                                          r"stage 0's activation message of step 2: "
                                          r"activation of shape \(4, 16\) where batch 0 had "
                                          r"\(8, 16\)"):
        run_distributed(job, timeout=20, threads=1)
