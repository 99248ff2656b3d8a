"""The layout of one kind of stage message, fixed by batch 0: its parts, packed or not.

A message is a few tensors of fixed shapes and dtypes (an activation and its labels; a backward
message), learned from batch 0 along the chain of stages (``mesh.chain_specs``). A small message
of several parts travels *packed*: one flat buffer holding every part at an offset that is a
multiple of ALIGN bytes, so one isend and one irecv carry it, and the receiver's parts are views
of that buffer (the bytes as sent: int64 labels arrive bitwise). A large one, or a single tensor,
travels as its own tensors, one isend each, with no copy.

Why (gloo, measured with ``benchmarks/messages.py``): each point-to-point operation costs a fixed
amount (its Python, gloo's I/O thread waking on both sides, the wait), so an activation sent with
its labels as two operations costs up to twice one operation at 16-64 KiB; copying into a buffer
costs time in proportion to the bytes, so past PACK_BYTES the copy costs more than the second
operation. Each torch call costs microseconds too, so the hot path makes few: the buffer has the
first part's dtype (that part is a single ``as_strided``; the labels a ``view`` and one more), the
sender reuses its packed buffers once their send is done (a fresh buffer also page-faults on its
first write), and the receiver allocates one fresh buffer per message, because the stage keeps
its input (the graph; a delayed message's recomputation).
"""
import math

import torch

ALIGN = 64  # bytes: every part starts where a fresh tensor would (SIMD loads, the same numerics)
PACK_BYTES = 256 << 10  # messages of several parts up to this many bytes travel as one buffer


def strides(shape):
    """The strides of a contiguous tensor of ``shape``, in elements."""
    out, step = [], 1
    for n in reversed(shape):
        out.append(step)
        step *= n
    return tuple(reversed(out))


class MessageLayout:
    """Where each part of one kind of message lies, and how it travels.

    what: how errors name the message ("stage 0's activation message"); parts: [(shape, dtype)];
    names: one word per part, for errors; device: where the buffers live (the CPU when a GPU's
    messages go through host memory). Complex parts always travel packed (as bytes)."""

    def __init__(self, what: str, parts: list, names: list, device, pack_bytes: int = PACK_BYTES):
        self.what, self.names, self.device = what, list(names), torch.device(device)
        self.parts = [(torch.Size(shape), dtype) for shape, dtype in parts]
        if len(self.names) != len(self.parts) or not self.parts:
            raise ValueError(f"MessageLayout: {len(self.names)} names for {len(self.parts)} "
                             f"parts; give one name per part, and at least one part")
        spans, end = [], 0  # (start, stop) byte offsets of each part in the packed buffer
        for shape, dtype in self.parts:
            start = -(-end // ALIGN) * ALIGN
            end = start + math.prod(shape) * dtype.itemsize
            spans.append((start, end))
        self.spans, self.nbytes = spans, end
        complex_ = any(dtype.is_complex for _, dtype in self.parts)
        self.packed = complex_ or (len(self.parts) > 1 and self.nbytes <= pack_bytes)
        first = self.parts[0][1]
        self.carrier = torch.uint8 if complex_ else first  # the packed buffer's dtype
        padded = -(-max(end, 1) // ALIGN) * ALIGN  # a whole number of elements of any dtype
        self.n_carrier = padded // self.carrier.itemsize
        # how a part is cut from the buffer: (dtype to view it as, or None, shape, strides, offset)
        self.cuts = [(None if dtype == self.carrier else dtype, shape, strides(shape),
                      start // dtype.itemsize)
                     for (start, _), (shape, dtype) in zip(spans, self.parts)]
        self.free = []  # packed send buffers whose send has completed: (flat, views of its parts)

    def check(self, tensors, step=None):
        """Raise a clear error unless ``tensors`` match the layout's parts, shape and dtype."""
        if len(tensors) != len(self.parts):
            at = "" if step is None else f" of step {step}"
            raise ValueError(f"{self.what}{at} has {len(tensors)} part(s), expected "
                             f"{len(self.parts)} ({', '.join(self.names)})")
        for t, (shape, dtype), name in zip(tensors, self.parts, self.names):
            if t.dtype != dtype or t.shape != shape:
                self._refuse(t, shape, dtype, name, step)

    def _refuse(self, t, shape, dtype, name, step):
        at = "" if step is None else f" of step {step}"
        if t.dtype != dtype:
            raise TypeError(f"{self.what}{at}: {name} of dtype {t.dtype} where batch 0 had "
                            f"{dtype}; every batch must have the dtypes of batch 0")
        raise ValueError(f"{self.what}{at}: {name} of shape {tuple(t.shape)} where batch 0 had "
                         f"{tuple(shape)}; every batch must have the shapes of batch 0 (the "
                         f"receiver's buffers are laid out from it): use one batch size "
                         f"throughout (drop a short last batch)")

    def views(self, flat):
        """The parts as views of a packed buffer ``flat`` (``empty()``'s)."""
        return tuple((flat if as_ is None else flat.view(as_)).as_strided(shape, strides, offset)
                     for as_, shape, strides, offset in self.cuts)

    def pack(self, tensors, step=None):
        """Checked tensors -> (the buffers to send, a token for ``release``): [flat] and a reused
        buffer when packed (give it back once its send is done), else the parts themselves."""
        self.check(tensors, step)
        if not self.packed:
            return [self._ready(t) for t in tensors], None
        flat, views = self.free.pop() if self.free else self._buffer()
        for view, t in zip(views, tensors):
            view.copy_(t.detach() if t.requires_grad else t)
        return [flat], (flat, views)

    def _ready(self, t):
        t = t.detach() if t.requires_grad else t
        t = t if t.device == self.device else t.to(self.device)
        return t if t.is_contiguous() else t.contiguous()

    def _buffer(self):
        flat = self.empty()[0]
        return flat, self.views(flat)

    def release(self, token):
        """After the send of ``pack``'s buffers completed: its packed buffer may be reused."""
        if token is not None:
            self.free.append(token)

    def empty(self):
        """Fresh buffers to receive one message into."""
        if self.packed:
            return [torch.empty(self.n_carrier, dtype=self.carrier, device=self.device)]
        return [torch.empty(shape, dtype=dtype, device=self.device) for shape, dtype in self.parts]

    def unpack(self, bufs, device=None):
        """Received buffers (``empty``'s, filled) -> the message's tensors, on ``device`` if
        given (one copy of the whole packed buffer), else where they are."""
        if self.packed:
            return self.views(bufs[0] if device is None else bufs[0].to(device))
        return tuple(bufs) if device is None else tuple(b.to(device) for b in bufs)
