"""The Plan: which local loss trains which block.

Blocks 0..L-1 form a chain. A Plan groups them into contiguous *stages*; stage s ends in a head
with a local loss l_s. Loss l_s trains the blocks of stage s, the ``overlap`` blocks just before
the stage's first block, and head s. That set of blocks is ``trained_by(s)``.

A window that would reach before block 0 is clipped at block 0 (stage 0 of ``Plan.overlapping``
has no earlier block to reach), so ``trained_by(0)`` is always just stage 0's blocks.

Pure Python on purpose: every backend reads the Plan, nothing else decides who trains what.
"""


def _check_int(name, value, low, high=None, where="Plan"):
    """Return ``value`` if it is an int in [low, high]; otherwise raise a clear error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where}: {name} must be an int, got {value!r} ({type(value).__name__})")
    if value < low or (high is not None and value > high):
        valid = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{where}: {name} must be {valid}, got {value}")
    return value


class Plan:
    """Contiguous stages of blocks plus an overlap; see the module docstring.

    >>> Plan(stages=((0, 1), (2, 3)), overlap=1).trained_by(1)
    (1, 2, 3)
    """

    def __init__(self, stages, overlap=0, name=None):
        self.stages = self._validate_stages(stages)
        self.n_blocks = self.stages[-1][-1] + 1
        self.overlap = _check_int("overlap", overlap, 0, self.n_blocks - 1,
                                  where=f"Plan(overlap={overlap!r})")
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
                _check_int(f"stage {i} block index", b, 0, where=where)
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
    def backprop(cls, n_blocks):
        """One stage of all blocks: the output loss trains everything."""
        n = _check_int("n_blocks", n_blocks, 1, where=f"Plan.backprop({n_blocks!r})")
        return cls((tuple(range(n)),), 0, name="backprop")

    @classmethod
    def greedy(cls, n_blocks):
        """One block per stage, no overlap: loss l_s trains block s only."""
        n = _check_int("n_blocks", n_blocks, 1, where=f"Plan.greedy({n_blocks!r})")
        return cls(tuple((b,) for b in range(n)), 0, name="greedy")

    @classmethod
    def overlapping(cls, n_blocks, overlap=1):
        """One block per stage; loss l_s also trains the ``overlap`` blocks before block s."""
        where = f"Plan.overlapping({n_blocks!r}, overlap={overlap!r})"
        n = _check_int("n_blocks", n_blocks, 1, where=where)
        k = _check_int("overlap", overlap, 0, n - 1, where=where)
        return cls(tuple((b,) for b in range(n)), k, name="overlapping" if k else "greedy")

    @classmethod
    def chunked(cls, n_blocks, n_chunks, overlap=0):
        """``n_chunks`` contiguous chunks as equal as possible (earlier chunks get the extra block)."""
        where = f"Plan.chunked({n_blocks!r}, n_chunks={n_chunks!r})"
        n = _check_int("n_blocks", n_blocks, 1, where=where)
        c = _check_int("n_chunks", n_chunks, 1, n, where=where)
        sizes = [n // c + (1 if i < n % c else 0) for i in range(c)]
        starts = [sum(sizes[:i]) for i in range(c)]
        stages = tuple(tuple(range(a, a + size)) for a, size in zip(starts, sizes))
        name = "backprop" if c == 1 and overlap == 0 else f"chunked({c})"
        return cls(stages, overlap, name=name)

    # --- queries ------------------------------------------------------------------------------
    @property
    def n_stages(self):
        return len(self.stages)

    def _check_stage(self, s, where):
        return _check_int("s", s, 0, self.n_stages - 1, where=f"{where} on a {self.n_stages}-stage plan")

    def trained_by(self, s):
        """Block indices that loss l_s trains: stage s plus up to ``overlap`` blocks before it."""
        s = self._check_stage(s, f"Plan.trained_by({s!r})")
        first, last = self.stages[s][0], self.stages[s][-1]
        return tuple(range(max(0, first - self.overlap), last + 1))

    def reach(self, s):
        """How many blocks before stage s its loss trains (``overlap``, clipped at block 0)."""
        s = self._check_stage(s, f"Plan.reach({s!r})")
        return self.stages[s][0] - self.trained_by(s)[0]

    def losses_for(self, block):
        """Stages whose loss trains ``block``: the inverse of ``trained_by``."""
        b = _check_int("block", block, 0, self.n_blocks - 1, where=f"Plan.losses_for({block!r})")
        return tuple(s for s in range(self.n_stages) if b in self.trained_by(s))

    def stage_of(self, block):
        """The stage that owns ``block``."""
        b = _check_int("block", block, 0, self.n_blocks - 1, where=f"Plan.stage_of({block!r})")
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

    def describe(self):
        """A text table: one row per loss, one column per block; 'x' = this loss trains it."""
        width = max(2, len(str(self.n_blocks - 1)) + 1)
        head = "loss  " + "".join(f"{'b' + str(b):>{width + 1}}" for b in range(self.n_blocks))
        rows = [head]
        for s in range(self.n_stages):
            trained = self.trained_by(s)
            cells = "".join(f"{'x' if b in trained else '.':>{width + 1}}" for b in range(self.n_blocks))
            rows.append(f"l{s:<4}" + cells + f"   head {s} after block {self.stages[s][-1]}")
        return "\n".join(rows)
