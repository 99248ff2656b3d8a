"""The Plan: which local loss trains which block.

Blocks 0..L-1 form a chain. A Plan groups them into contiguous *stages*; stage s ends in a head
with a local loss l_s. Loss l_s trains the blocks of stage s, the ``overlap`` blocks just before
the stage's first block, and head s. That set of blocks is ``trained_by(s)``.

A window that would reach before block 0 is clipped at block 0 (stage 0 of ``Plan.overlapping``
has no earlier block to reach), so ``trained_by(0)`` is always just stage 0's blocks.

The Plan also owns the topology the runners need: ``receivers()`` (how far each backward message
reaches), ``last_user(s)`` (how long stage s keeps its graph) and ``hops(s)``. A loss that reaches
more than one stage back (``hops(s) > 1``, e.g. ``Plan.overlapping(4, 2)``) is exact in LocalNet
and the NumPy core, where the message continues hop by hop within the step; the asynchronous
runtimes (``runtime.Job``) send a message one hop only and refuse such a plan.

Names: ``Plan.from_spec("chunked(2)", n_blocks)`` reads a text spec and ``plan.spec`` writes one.

Pure Python on purpose: every backend reads the Plan, nothing else decides who trains what.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from .validate import check_int

METHODS = ("backprop", "greedy", "overlapping", "chunked")
SPEC_KEYS = ("chunks", "overlap")
SPEC_HELP = ("'backprop', 'greedy', 'overlapping', 'overlapping(K)', 'chunked(C)', "
             "'chunked(C),overlap=K' or 'chunks=C,overlap=K'")


class Plan:
    """Contiguous stages of blocks plus an overlap; see the module docstring.

    >>> Plan(stages=((0, 1), (2, 3)), overlap=1).trained_by(1)
    (1, 2, 3)
    """

    def __init__(self, stages: Iterable[Iterable[int]], overlap: int = 0,
                 name: str | None = None) -> None:
        self.stages = self._validate_stages(stages)
        self.n_blocks = self.stages[-1][-1] + 1
        self.overlap = check_int(f"Plan(overlap={overlap!r})", "overlap", overlap, 0, self.n_blocks - 1)
        self.name = name

    @staticmethod
    def _validate_stages(stages):
        where = "Plan(stages=...)"
        if isinstance(stages, (str, bytes)) or not hasattr(stages, "__iter__"):
            raise TypeError(f"{where}: stages must be a sequence of sequences of block indices, "
                            f"e.g. ((0, 1), (2, 3)); got {stages!r}")
        stages = [s for s in stages]
        if not stages:
            raise ValueError(f"{where}: stages is empty; give at least one stage, e.g. ((0,),)")
        out, expected = [], 0
        for i, stage in enumerate(stages):
            if isinstance(stage, (str, bytes)) or not hasattr(stage, "__iter__"):
                raise TypeError(f"{where}: stage {i} must be a sequence of block indices, got {stage!r}")
            stage = tuple(stage)
            if not stage:
                raise ValueError(f"{where}: stage {i} is empty; every stage needs at least one block")
            for b in stage:
                check_int(where, f"stage {i} block index", b, 0)
            if stage[0] != expected:
                what = "out of order or overlapping" if stage[0] < expected else "leaving a gap"
                raise ValueError(f"{where}: stage {i} starts at block {stage[0]} but must start at "
                                 f"block {expected} ({what}); stages must cover blocks 0..L-1 "
                                 f"contiguously, in order")
            if stage != tuple(range(stage[0], stage[0] + len(stage))):
                raise ValueError(f"{where}: stage {i} = {stage} is not contiguous; "
                                 f"use consecutive block indices like {tuple(range(stage[0], stage[0] + len(stage)))}")
            out.append(stage)
            expected = stage[-1] + 1
        return tuple(out)

    # --- constructors -------------------------------------------------------------------------
    @classmethod
    def backprop(cls, n_blocks: int) -> Plan:
        """One stage of all blocks: the output loss trains everything."""
        n = check_int(f"Plan.backprop({n_blocks!r})", "n_blocks", n_blocks, 1)
        return cls((tuple(range(n)),), 0, name="backprop")

    @classmethod
    def greedy(cls, n_blocks: int) -> Plan:
        """One block per stage, no overlap: loss l_s trains block s only."""
        n = check_int(f"Plan.greedy({n_blocks!r})", "n_blocks", n_blocks, 1)
        return cls(tuple((b,) for b in range(n)), 0, name="greedy")

    @classmethod
    def overlapping(cls, n_blocks: int, overlap: int = 1) -> Plan:
        """One block per stage; loss l_s also trains the ``overlap`` blocks before block s."""
        where = f"Plan.overlapping({n_blocks!r}, overlap={overlap!r})"
        n = check_int(where, "n_blocks", n_blocks, 1)
        k = check_int(where, "overlap", overlap, 0, n - 1)
        return cls(tuple((b,) for b in range(n)), k, name="overlapping" if k else "greedy")

    @classmethod
    def chunked(cls, n_blocks: int, n_chunks: int, overlap: int = 0) -> Plan:
        """``n_chunks`` contiguous chunks as equal as possible (earlier chunks get the extra block)."""
        where = f"Plan.chunked({n_blocks!r}, n_chunks={n_chunks!r})"
        n = check_int(where, "n_blocks", n_blocks, 1)
        c = check_int(where, "n_chunks", n_chunks, 1, n)
        sizes = [n // c + (1 if i < n % c else 0) for i in range(c)]
        starts = [sum(sizes[:i]) for i in range(c)]
        stages = tuple(tuple(range(a, a + size)) for a, size in zip(starts, sizes))
        name = "backprop" if c == 1 and overlap == 0 else f"chunked({c})"
        return cls(stages, overlap, name=name + (f", overlap {overlap}" if overlap else ""))

    @classmethod
    def from_spec(cls, spec: str, n_blocks: int) -> Plan:
        """The Plan a text spec names, for ``n_blocks`` blocks; ``Plan.from_spec(p.spec, L) == p``.

        Specs: a method, ``backprop``, ``greedy``, ``overlapping`` (overlap 1), ``overlapping(K)``,
        ``chunked(C)`` (C equal chunks, as ``Plan.chunked``), optionally followed by
        ``,overlap=K`` for chunked; or key=value pairs ``chunks=C,overlap=K`` (missing keys: one
        block per chunk, no overlap). ``chunkedC`` (no parentheses) is read as ``chunked(C)``.
        """
        where = f"Plan.from_spec({spec!r}, n_blocks={n_blocks!r})"
        n = check_int(where, "n_blocks", n_blocks, 1)
        chunks, overlap = _parse_spec(spec, n, where)
        check_int(where, "chunks", chunks, 1, n, high_name="n_blocks")
        check_int(where, "overlap", overlap, 0, n - 1, high_name="n_blocks - 1")
        if chunks == n:  # one block per stage (n == 1 is backprop and greedy at once)
            return cls.overlapping(n, overlap) if n > 1 else cls.backprop(n)
        return cls.chunked(n, chunks, overlap)

    # --- queries ------------------------------------------------------------------------------
    @property
    def n_stages(self) -> int:
        return len(self.stages)

    @property
    def spec(self) -> str | None:
        """The text spec that ``Plan.from_spec`` reads back to this plan; None when the stages
        are not the equal chunks of ``Plan.chunked`` (a general plan has no short name)."""
        K, k = self.n_stages, self.overlap
        if self.stages != Plan.chunked(self.n_blocks, K).stages:
            return None
        if K == self.n_blocks and K > 1:
            return {0: "greedy", 1: "overlapping"}.get(k, f"overlapping({k})")
        if K == 1 and k == 0:
            return "backprop"
        return f"chunked({K})" + (f",overlap={k}" if k else "")

    def hops(self, s: int) -> int:
        """How many earlier stages loss l_s reaches into (0: none, 1: one backward message)."""
        first = self.trained_by(s)[0]
        return s - self.stage_of(first)

    def receivers(self) -> list[int]:
        """Per stage s: how many blocks before stage s+1 its loss trains, the blocks a backward
        message from stage s+1 must reach (0: no message). More than stage s's own blocks means
        the message continues to stage s-1 (``hops`` > 1)."""
        return [self.reach(s + 1) if s + 1 < self.n_stages else 0 for s in range(self.n_stages)]

    def last_user(self, s: int) -> int | None:
        """The last later stage whose loss trains a block of stage s, or None: stage s must keep
        the graph of its forward until that stage's message has arrived, then it may update."""
        users = [u for u in range(s + 1, self.n_stages) if self.trained_by(u)[0] <= self.stages[s][-1]]
        return max(users, default=None)

    def _check_stage(self, s, where):
        return check_int(f"{where} on a {self.n_stages}-stage plan", "s", s, 0, self.n_stages - 1)

    def trained_by(self, s: int) -> tuple[int, ...]:
        """Block indices that loss l_s trains: stage s plus up to ``overlap`` blocks before it."""
        s = self._check_stage(s, f"Plan.trained_by({s!r})")
        first, last = self.stages[s][0], self.stages[s][-1]
        return tuple(range(max(0, first - self.overlap), last + 1))

    def reach(self, s: int) -> int:
        """How many blocks before stage s its loss trains (``overlap``, clipped at block 0)."""
        s = self._check_stage(s, f"Plan.reach({s!r})")
        return self.stages[s][0] - self.trained_by(s)[0]

    def losses_for(self, block: int) -> tuple[int, ...]:
        """Stages whose loss trains ``block``: the inverse of ``trained_by``."""
        b = check_int(f"Plan.losses_for({block!r})", "block", block, 0, self.n_blocks - 1)
        return tuple(s for s in range(self.n_stages) if b in self.trained_by(s))

    def stage_of(self, block: int) -> int:
        """The stage that owns ``block``."""
        b = check_int(f"Plan.stage_of({block!r})", "block", block, 0, self.n_blocks - 1)
        return next(s for s, stage in enumerate(self.stages) if b in stage)

    # --- display ------------------------------------------------------------------------------
    def __eq__(self, other):
        return isinstance(other, Plan) and (self.stages, self.overlap) == (other.stages, other.overlap)

    def __hash__(self):
        return hash((self.stages, self.overlap))

    def __repr__(self):
        stages = ", ".join("(" + ", ".join(map(str, s)) + ("," if len(s) == 1 else "") + ")"
                           for s in self.stages) + ("," if self.n_stages == 1 else "")
        label = f"  # {self.name}" if self.name else ""
        return f"Plan(stages=({stages}), overlap={self.overlap}){label}"

    def describe(self) -> str:
        """A text table: one row per loss, one column per block; 'x' = this loss trains it."""
        width = max(2, len(str(self.n_blocks - 1)) + 1)
        head = "loss  " + "".join(f"{'b' + str(b):>{width + 1}}" for b in range(self.n_blocks))
        rows = [head]
        for s in range(self.n_stages):
            trained = self.trained_by(s)
            cells = "".join(f"{'x' if b in trained else '.':>{width + 1}}" for b in range(self.n_blocks))
            rows.append(f"l{s:<4}" + cells + f"   head {s} after block {self.stages[s][-1]}")
        return "\n".join(rows)


def _parse_spec(spec: str, n: int, where: str) -> tuple:
    """(chunks, overlap) that a spec names for n blocks; see ``Plan.from_spec``."""
    if not isinstance(spec, str):
        raise TypeError(f"{where}: spec must be a string such as 'chunked(2)' or "
                        f"'chunks=2,overlap=1', got {type(spec).__name__}")
    items = spec.replace(" ", "").lower().split(",")
    if items == [""]:
        raise ValueError(f"{where}: spec is empty; write one of {SPEC_HELP}")
    values = {}
    method = re.fullmatch(r"(backprop|greedy|overlapping|chunked)(?:\((\d+)\)|(\d+))?", items[0])
    if method:
        name, arg = method.group(1), method.group(2) or method.group(3)
        if arg is not None and name in ("backprop", "greedy"):
            raise ValueError(f"{where}: {name} takes no number; write {name!r}")
        if arg is None and name == "chunked":
            raise ValueError(f"{where}: chunked needs a number of chunks, e.g. 'chunked(2)'")
        values = {"backprop": {"chunks": 1, "overlap": 0}, "greedy": {"chunks": n, "overlap": 0},
                  "overlapping": {"chunks": n, "overlap": int(arg or 1)},
                  "chunked": {"chunks": int(arg or 0)}}[name]
        items = items[1:]
    fixed = set(values)
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{where}: {item!r} is not key=value; write one of {SPEC_HELP}")
        if key not in SPEC_KEYS:
            raise ValueError(f"{where}: unknown key {key!r}; the keys are {list(SPEC_KEYS)}")
        if key in values:
            raise ValueError(f"{where}: {key!r} is given twice" +
                             (f" ({method.group(1)} sets it)" if key in fixed else "") +
                             "; give each key once")
        if not value.isdigit():
            raise ValueError(f"{where}: {key} must be a whole number, got {value!r}")
        values[key] = int(value)
    return values.get("chunks", n), values.get("overlap", 0)
