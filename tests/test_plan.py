"""The Plan contract: constructors, trained_by, describe(), and a clear error for every bad input."""
import pytest

from minilocal import Plan


def test_backprop_is_one_stage_of_all_blocks():
    p = Plan.backprop(4)
    assert p.stages == ((0, 1, 2, 3),) and p.overlap == 0
    assert p.trained_by(0) == (0, 1, 2, 3)


def test_greedy_one_block_per_stage():
    p = Plan.greedy(3)
    assert p.stages == ((0,), (1,), (2,))
    assert [p.trained_by(s) for s in range(3)] == [(0,), (1,), (2,)]


def test_overlapping_block_learns_from_its_loss_and_the_next():
    p = Plan.overlapping(4)
    assert [p.trained_by(s) for s in range(4)] == [(0,), (0, 1), (1, 2), (2, 3)]
    assert [p.losses_for(b) for b in range(4)] == [(0, 1), (1, 2), (2, 3), (3,)]
    assert [p.reach(s) for s in range(4)] == [0, 1, 1, 1]


def test_overlap_before_block_zero_is_clipped():
    p = Plan(stages=((0,), (1, 2), (3,)), overlap=2)
    assert p.trained_by(0) == (0,)
    assert p.trained_by(1) == (0, 1, 2)      # wants 2 blocks back, only block 0 exists
    assert p.trained_by(2) == (1, 2, 3)
    assert [p.reach(s) for s in range(3)] == [0, 1, 2]


@pytest.mark.parametrize("n, c, stages", [
    (4, 2, ((0, 1), (2, 3))),
    (5, 2, ((0, 1, 2), (3, 4))),
    (7, 3, ((0, 1, 2), (3, 4), (5, 6))),
    (3, 3, ((0,), (1,), (2,))),
])
def test_chunked_splits_contiguously_earlier_chunks_larger(n, c, stages):
    assert Plan.chunked(n, c).stages == stages


def test_equivalent_constructors():
    assert Plan.chunked(5, 1) == Plan.backprop(5)
    assert Plan.overlapping(5, overlap=0) == Plan.greedy(5)
    assert Plan.chunked(5, 5) == Plan.greedy(5)
    assert Plan(stages=[[0, 1], [2]], overlap=0) == Plan.chunked(3, 2)
    assert hash(Plan.greedy(3)) == hash(Plan(((0,), (1,), (2,))))


def test_trained_by_matches_definition_for_general_plans():
    for p in [Plan.chunked(7, 3, overlap=2), Plan(((0, 1), (2,), (3, 4, 5)), overlap=1)]:
        for s, stage in enumerate(p.stages):
            want = tuple(b for b in range(p.n_blocks) if stage[0] - p.overlap <= b <= stage[-1])
            assert p.trained_by(s) == want
        for b in range(p.n_blocks):
            assert p.losses_for(b) == tuple(s for s in range(p.n_stages) if b in p.trained_by(s))
            assert b in p.stages[p.stage_of(b)]


def test_repr_round_trips_and_describe_table():
    for p in [Plan.backprop(3), Plan.overlapping(3), Plan(((0, 1), (2,)), overlap=1)]:
        assert eval(repr(p).split("  #")[0]) == p
    table = Plan.overlapping(3).describe().splitlines()
    assert table[0].split() == ["loss", "b0", "b1", "b2"]
    assert table[1].split()[:4] == ["l0", "x", ".", "."]
    assert table[2].split()[:4] == ["l1", "x", "x", "."]
    assert table[3].split()[:4] == ["l2", ".", "x", "x"]


BAD = [
    (lambda: Plan.backprop(0), ValueError, r"n_blocks must be an int >= 1, got 0"),
    (lambda: Plan.greedy(-3), ValueError, r"n_blocks must be an int >= 1"),
    (lambda: Plan.greedy(2.0), TypeError, r"n_blocks must be an int, got 2.0"),
    (lambda: Plan.greedy(True), TypeError, r"n_blocks must be an int, got True"),
    (lambda: Plan.chunked(4, 5), ValueError, r"n_chunks must be between 1 and 4, got 5"),
    (lambda: Plan.chunked(4, 0), ValueError, r"n_chunks must be between 1 and 4, got 0"),
    (lambda: Plan.chunked(4, "2"), TypeError, r"n_chunks must be an int"),
    (lambda: Plan.overlapping(4, overlap=-1), ValueError, r"overlap must be between 0 and 3, got -1"),
    (lambda: Plan.overlapping(4, overlap=4), ValueError, r"overlap must be between 0 and 3, got 4"),
    (lambda: Plan(((0,), (1,)), overlap=1.5), TypeError, r"overlap must be an int"),
    (lambda: Plan(()), ValueError, r"stages is empty"),
    (lambda: Plan(((0,), ())), ValueError, r"stage 1 is empty"),
    (lambda: Plan(((0, 2), (1,))), ValueError, r"stage 0 = \(0, 2\) is not contiguous"),
    (lambda: Plan(((0,), (2,))), ValueError, r"stage 1 starts at block 2 but must start at block 1 \(leaving a gap\)"),
    (lambda: Plan(((1,), (0,))), ValueError, r"stage 0 starts at block 1 but must start at block 0"),
    (lambda: Plan(((0, 1), (1, 2))), ValueError, r"out of order or overlapping"),
    (lambda: Plan(((0,), (1, -1))), ValueError, r"block index must be an int >= 0"),
    (lambda: Plan(((0,), ("1",))), TypeError, r"block index must be an int"),
    (lambda: Plan(((0,), (True,))), TypeError, r"block index must be an int"),
    (lambda: Plan("01"), TypeError, r"stages must be a sequence of sequences"),
    (lambda: Plan((0, 1)), TypeError, r"stage 0 must be a sequence of block indices"),
    (lambda: Plan.greedy(3).trained_by(3), ValueError, r"s must be between 0 and 2, got 3"),
    (lambda: Plan.greedy(3).losses_for(5), ValueError, r"block must be between 0 and 2, got 5"),
]


@pytest.mark.parametrize("make, error, message", BAD, ids=[m for _, _, m in BAD])
def test_bad_input_raises_clear_error(make, error, message):
    with pytest.raises(error, match=message):
        make()


# --- names: Plan.from_spec and Plan.spec ---------------------------------------------------------
def every_constructor(n):
    """Every plan the four constructors build for n blocks."""
    plans = [Plan.backprop(n), Plan.greedy(n)]
    plans += [Plan.overlapping(n, k) for k in range(n)]
    plans += [Plan.chunked(n, c, k) for c in range(1, n + 1) for k in range(n)]
    return plans


@pytest.mark.parametrize("n", [1, 2, 4, 5])
def test_from_spec_round_trips_every_constructor(n):
    for p in every_constructor(n):
        assert p.spec is not None, p
        back = Plan.from_spec(p.spec, n)
        assert back == p and back.spec == p.spec, (p, p.spec, back)


@pytest.mark.parametrize("spec, want", [
    ("backprop", Plan.backprop(4)),
    ("greedy", Plan.greedy(4)),
    ("overlapping", Plan.overlapping(4, 1)),
    ("overlapping(2)", Plan.overlapping(4, 2)),
    ("chunked(2)", Plan(((0, 1), (2, 3)))),
    ("chunked(3), overlap=1", Plan(((0, 1), (2,), (3,)), overlap=1)),
    ("chunked2", Plan.chunked(4, 2)),                      # the sweep cache's spelling
    ("chunks=2,overlap=1", Plan(((0, 1), (2, 3)), overlap=1)),
    (" Chunks = 4 ", Plan.greedy(4)),
    ("overlap=2", Plan.overlapping(4, 2)),
])
def test_from_spec_hand_worked(spec, want):
    assert Plan.from_spec(spec, 4) == want


def test_spec_names_back_and_general_plans_have_none():
    assert [p.spec for p in (Plan.backprop(3), Plan.greedy(3), Plan.overlapping(3),
                             Plan.overlapping(3, 2), Plan.chunked(5, 2), Plan.chunked(5, 2, 1))] \
        == ["backprop", "greedy", "overlapping", "overlapping(2)", "chunked(2)", "chunked(2),overlap=1"]
    assert Plan(((0,), (1, 2))).spec is None  # not Plan.chunked's split (earlier chunks larger)


SPEC_BAD = [
    ("chunky", ValueError, "'chunky' is not key=value; write one of 'backprop', 'greedy'"),
    ("chunked", ValueError, "chunked needs a number of chunks, e.g. 'chunked(2)'"),
    ("greedy(2)", ValueError, "greedy takes no number"),
    ("greedy,overlap=1", ValueError, "'overlap' is given twice (greedy sets it)"),
    ("chunked(5)", ValueError, "chunks must be between 1 and n_blocks (4), got 5"),
    ("overlapping(4)", ValueError, "overlap must be between 0 and n_blocks - 1 (3), got 4"),
    ("", ValueError, "spec is empty"),
    (None, TypeError, "spec must be a string"),
]


@pytest.mark.parametrize("spec, error, message", SPEC_BAD, ids=[str(s) for s, _, _ in SPEC_BAD])
def test_from_spec_bad_input_lists_the_valid_specs(spec, error, message):
    import re
    with pytest.raises(error, match=re.escape(message)):
        Plan.from_spec(spec, 4)


# --- topology: messages and graph lifetimes ------------------------------------------------------
def test_receivers_hops_and_last_user_hand_worked():
    p = Plan.overlapping(4)                         # loss s reaches block s-1 only
    assert p.receivers() == [1, 1, 1, 0]
    assert [p.hops(s) for s in range(4)] == [0, 1, 1, 1]
    assert [p.last_user(s) for s in range(4)] == [1, 2, 3, None]
    p = Plan.overlapping(4, 2)                      # loss 2 reaches blocks 0 and 1: two hops
    assert p.receivers() == [1, 2, 2, 0]            # loss 1 has only block 0 before it
    assert [p.hops(s) for s in range(4)] == [0, 1, 2, 2]
    assert [p.last_user(s) for s in range(4)] == [2, 3, 3, None]
    assert Plan.greedy(3).receivers() == [0, 0, 0]
    assert [Plan.chunked(5, 2).last_user(s) for s in range(2)] == [None, None]


def test_last_user_matches_trained_by_for_general_plans():
    for p in [Plan.chunked(7, 3, overlap=2), Plan(((0, 1), (2,), (3, 4, 5)), overlap=1)]:
        for t in range(p.n_stages):
            users = [u for u in range(t + 1, p.n_stages) if set(p.trained_by(u)) & set(p.stages[t])]
            assert p.last_user(t) == (max(users) if users else None)
