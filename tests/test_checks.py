"""Exercise checks: max_rel_error on hand-worked values, check's pass / fail / not-done paths, structure
before numbers, messages that name the place, the case and the inputs, and the torch concepts."""
import re

import numpy as np
import pytest
import torch

from minilocal.teaching.checks import check, max_rel_error


# --- max_rel_error ----------------------------------------------------------------------------
@pytest.mark.parametrize("got, want, expected", [
    (1.1, 1.0, 0.1 / 2.1),                       # |1.1 - 1| / (1.1 + 1)
    ([1.0, 2.0], [1.0, 2.0], 0.0),
    (0.0, 0.0, 0.0),                             # the 1e-8 floor avoids 0 / 0
    (1e-9, 0.0, 0.1),                            # 1e-9 / max(1e-9, 1e-8)
    ([3.0, -1.0], [1.0, -1.0], 0.5),             # worst element: 2 / 4
])
def test_max_rel_error_hand_worked(got, want, expected):
    assert max_rel_error(got, want) == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_max_rel_error_refuses_other_shapes_and_is_nan_for_nan():
    with pytest.raises(AssertionError, match=r"shape \(2, 3\), expected \(3, 2\)"):
        max_rel_error(np.zeros((2, 3)), np.zeros((3, 2)))
    assert np.isnan(max_rel_error([1.0, np.nan], [1.0, 1.0]))


# --- check ------------------------------------------------------------------------------------
CASES = [(np.array([1.0, -2.0, 3.0]),), (np.array([[0.5, -0.5]]),)]


def relu(x):
    return np.maximum(x, 0)


def stub(x):
    raise NotImplementedError("Exercise 9.1: relu")


def test_pass_returns_the_student_function_and_prints_the_tolerance(capsys):
    def close(x):
        return relu(x) * (1 + 6e-9)              # relative error 6e-9 / (2 + 6e-9) ~ 3e-9
    assert check("9.1", close, relu, CASES, tol=1e-7) is close
    assert capsys.readouterr().out == "Exercise 9.1: PASS (2 cases within tolerance 1e-07)\n"


def test_the_pass_line_does_not_depend_on_rounding(capsys):
    # Answers that differ in their last bits (another CPU, another BLAS) print the same line.
    for wobble in (0.0, 1e-15, 3e-13, 2e-11):
        check("9.1", lambda x, w=wobble: relu(x) * (1 + w), relu, CASES)
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["Exercise 9.1: PASS (2 cases within tolerance 1e-06)"] * 4


def test_one_case_is_singular(capsys):
    check("9.1", relu, relu, CASES[:1], tol=0.5)
    assert capsys.readouterr().out == "Exercise 9.1: PASS (1 case within tolerance 5e-01)\n"


def test_wrong_answer_raises_with_the_case_and_the_error():
    def wrong_on_matrices(x):
        return relu(x) if x.ndim == 1 else -relu(x)
    with pytest.raises(AssertionError, match=r"Exercise 9\.1: FAIL on case 1 \(cases 0-1\): result at "
                                             r"\[0, 0\] is -0\.5, expected 0\.5: relative error 1\.00e\+00 "
                                             r"> tolerance 1e-06\n  inputs: x=array \(1, 2\) float64 \[0\.5, -0\.5\]"):
        check("9.1", wrong_on_matrices, relu, CASES)


def test_wrong_shape_and_nan_fail():
    with pytest.raises(AssertionError, match=r"FAIL on case 0 \(cases 0-1\): result has shape \(1, 3\), "
                                             r"expected \(3,\)"):
        check("9.1", lambda x: relu(x)[None], relu, CASES)
    with pytest.raises(AssertionError, match=r"FAIL on case 0 \(cases 0-1\): result at \[0\] is NaN, expected 1"):
        check("9.1", lambda x: relu(x) * np.nan, relu, CASES)


def test_not_done_yet_returns_the_reference(capsys):
    assert check("9.1", stub, relu, CASES) is relu
    assert capsys.readouterr().out == "Exercise 9.1: not done yet -> using the reference implementation\n"


def test_compare_selects_what_must_match():
    def fwd(x):
        return relu(x), ("any", "cache")
    def ref_fwd(x):
        return relu(x), (x, x > 0)
    assert check("9.2", fwd, ref_fwd, CASES, compare=lambda r: r[0]) is fwd
    with pytest.raises(AssertionError, match=r"FAIL on case 0 .*: result\[1\]\[0\] is 'any', expected numbers"):
        check("9.2", fwd, ref_fwd, CASES)


def test_an_in_place_edit_cannot_change_the_reference_answer():
    def identity(x):
        return x
    def doubles_in_place(x):
        x *= 2
        return x
    with pytest.raises(AssertionError, match=r"FAIL on case 0 .*changed its input x in place \(entry \[0\] "
                                             r"was 1\.0, is now 2\.0\)"):
        check("9.3", doubles_in_place, identity, CASES)


@pytest.mark.parametrize("cases, tol, error, message", [
    ([], 1e-6, TypeError, "cases must be a non-empty list"),
    (np.zeros((2, 3)), 1e-6, TypeError, "cases must be a non-empty list"),
    ([np.zeros(3)], 1e-6, TypeError, r"case 0 must be a tuple of arguments, got ndarray; write .* as \(x,\)"),
    (CASES, 0.0, ValueError, "tol must be a positive number"),
    (CASES, "1e-6", ValueError, "tol must be a positive number"),
])
def test_bad_arguments_get_a_clear_error(cases, tol, error, message):
    with pytest.raises(error, match=r"check\('9\.1', \.\.\.\): " + message):
        check("9.1", relu, relu, cases, tol=tol)


def test_arguments_that_close_over_each_other_still_work():
    from minilocal.numpy_core import numerical_grad
    x = np.array([1.0, -2.0, 0.5])
    f = lambda: float(np.sum(x ** 3))                # f reads x: the gradient is 3 x^2

    def forward_difference(f, x, eps=1e-6):
        grad = np.zeros_like(x)
        for i in range(x.size):
            old, base = x[i], f()
            x[i] = old + eps
            grad[i] = (f() - base) / eps
            x[i] = old
        return grad
    assert check("9.4", forward_difference, numerical_grad, [(f, x)], tol=1e-5) is forward_difference
    np.testing.assert_allclose(numerical_grad(f, x), 3 * x ** 2, rtol=1e-8)


def test_copy_args_lets_both_functions_start_from_the_same_state():
    def step(params, lr):                            # an in-place update, like an optimizer step
        params["w"] -= lr * params["w"]
        return params["w"]
    cases = [({"w": np.array([1.0, 2.0])}, 0.5)]
    assert check("9.5", step, step, cases, copy_args=True) is step
    assert cases[0][0]["w"].tolist() == [1.0, 2.0], "the case itself must not change"
    with pytest.raises(AssertionError, match="FAIL on case 0"):  # without copies the second call sees w/2
        check("9.5", step, step, [({"w": np.array([1.0, 2.0])}, 0.5)])


# --- structure before numbers -----------------------------------------------------------------
def linear(x, params):
    return x @ params["weight"].T + params["bias"], (x, params)


LINEAR = [(np.arange(6.0).reshape(2, 3), {"weight": np.ones((4, 3)), "bias": np.arange(4.0)})]


@pytest.mark.parametrize("answer, message", [
    (lambda x, p: None, r"result is None, expected \(array \(2, 4\), \(array \(2, 3\), dict \{weight, bias\}\)\): "
                        r"is a `return` missing\?"),
    (lambda x, p: linear(x, p)[0], r"result is array \(2, 4\) .*, expected a tuple of 2"),
    (lambda x, p: (linear(x, p)[0], (p, x)), r"result\[1\]\[0\] is dict \{weight, bias\}, expected numbers"),
    (lambda x, p: (*linear(x, p), 0), r"result has 3 entries .*, expected 2"),
    (lambda x, p: (linear(x, p)[0], (x, {"w": p["weight"], "bias": p["bias"]})),
     r"result\[1\]\[1\] has missing keys \['weight'\] and unexpected keys \['w'\]"),
    (lambda x, p: (linear(x, p)[0].sum(0), (x, p)), r"result\[0\] has shape \(4,\), expected \(2, 4\)"),
])
def test_structure_is_compared_before_numbers_and_named(answer, message):
    with pytest.raises(AssertionError, match=message):
        check("1.1", answer, linear, LINEAR)


def test_a_scalar_shape_says_how_to_make_a_scalar():
    with pytest.raises(AssertionError, match=r"shape \(1,\), expected \(\) \(a scalar: use float"):
        check("1.0", lambda x: np.sum(x, keepdims=True)[None, 0], lambda x: np.sum(x), CASES)


def test_integers_are_exact_and_floats_for_integers_are_refused():
    count = lambda n: n * (n + 1) // 2
    with pytest.raises(AssertionError, match=r"result holds floats \(float64\), expected integers"):
        check("1.0", lambda n: n * (n + 1) / 2, count, [(3,)], tol=0.5)
    with pytest.raises(AssertionError, match=r"result is 7, expected 6 \(compared exactly\)"):
        check("1.0", lambda n: count(n) + 1, count, [(3,)], tol=0.5)
    assert check("1.0", lambda n: float(count(n)), lambda n: float(count(n)), [(3,)])  # floats stay floats
    check("1.0", count, lambda n: float(count(n)), [(3,)])  # an exact integer may stand for a float


def test_dicts_are_compared_by_name_not_by_order():
    want = lambda: {"b": np.ones(2), "a": np.zeros(2)}
    assert check("1.0", lambda: {"a": np.zeros(2), "b": np.ones(2)}, want, [()])
    with pytest.raises(AssertionError, match=r"result\['b'\] at \[0\] is 0, expected 1"):
        check("1.0", lambda: {"a": np.ones(2), "b": np.zeros(2)}, want, [()])


@pytest.mark.parametrize("tol", [1e-12, 1e-9, 1e-6])
def test_an_answer_just_outside_the_tolerance_fails_and_just_inside_passes(tol):
    # relative error |g - w| / (|g| + |w|) of a factor (1 + d) is d / (2 + d): 3 tol fails, tol / 3 passes
    with pytest.raises(AssertionError, match=rf"relative error 3\.0\de-\d\d > tolerance {tol:.0e}"):
        check("1.0", lambda x: relu(x) * (1 + 6 * tol), relu, CASES, tol=tol)
    check("1.0", lambda x: relu(x) * (1 + tol / 2), relu, CASES, tol=tol)


def test_the_failing_case_is_named_not_the_first():
    def wrong_on_the_last(x):
        return relu(x) + (x.size == 5)
    cases = [(np.ones(3),), (np.ones(4),), (np.ones(5),)]
    with pytest.raises(AssertionError, match=r"FAIL on case 2 \(cases 0-2\)"):
        check("1.0", wrong_on_the_last, relu, cases)


def test_a_case_that_restores_its_input_only_approximately_fails():
    def nudge_and_undo(x):
        x[0] += 0.1
        x[0] -= 0.1                               # 1/3 + 0.1 - 0.1 != 1/3 in floating point
        return relu(x)
    with pytest.raises(AssertionError, match=r"changed its input x in place .* bit for bit"):
        check("1.3", nudge_and_undo, relu, [(np.array([1 / 3, 2.0]),)])


def test_concepts_run_before_the_values_and_their_message_is_the_failure():
    def no_negative_inputs(fn, args):
        return "x has a negative entry" if (args[0] < 0).any() else None
    with pytest.raises(AssertionError, match=r"FAIL on case 0 .*: x has a negative entry"):
        check("1.0", relu, relu, CASES, concepts=[no_negative_inputs])
    check("1.0", relu, relu, [(np.ones(2),)], concepts=[no_negative_inputs])


# --- concepts of the torch exercises -----------------------------------------------------------
def stage_cases():
    torch.manual_seed(0)
    return [(torch.nn.Linear(5, 6), torch.nn.Linear(6, 3), torch.randn(4, 5), torch.randint(0, 3, (4,)))]


def right_step(block, head, x_in, y):
    out = block(x_in.detach())
    loss = torch.nn.functional.cross_entropy(head(out), y)
    return out.detach(), loss.detach(), torch.autograd.grad(loss, list(block.parameters()))


def test_stops_gradient_accepts_the_stop_gradient():
    from minilocal.teaching.checks import stops_gradient
    assert stops_gradient(right_step, stage_cases()[0]) is None


@pytest.mark.parametrize("wrong, message", [
    ("autograd", "the block ran on x_in itself"),
    ("backward", r"a gradient reached the stage's input x_in"),
    ("attached", r"the returned output still carries the graph"),
])
def test_stops_gradient_catches_a_missing_detach(wrong, message):
    from minilocal.teaching.checks import stops_gradient

    def step(block, head, x_in, y):
        out = block(x_in if wrong != "attached" else x_in.detach())
        loss = torch.nn.functional.cross_entropy(head(out), y)
        if wrong == "backward":
            loss.backward()
            grads = [p.grad for p in block.parameters()]
        else:
            grads = torch.autograd.grad(loss, list(block.parameters()), retain_graph=True)
        return (out if wrong == "attached" else out.detach()), loss.detach(), grads
    assert re.search(message, stops_gradient(step, stage_cases()[0]))


def test_an_exception_in_the_answer_is_a_fail_with_the_case_and_its_cause():
    def crashes_on_matrices(x):
        return relu(x) if x.ndim == 1 else x @ np.ones(5)
    with pytest.raises(AssertionError, match=r"FAIL on case 1 \(cases 0-1\): it raised ValueError: .*\n  inputs: x=") as info:
        check("9.1", crashes_on_matrices, relu, CASES)
    assert isinstance(info.value.__cause__, ValueError), "the student's traceback stays attached"


# --- 1.3: the rank layout of a K x D mesh -----------------------------------------------------
def stage_major(K, D, rank, *, next_step=None, group=None):
    """The runtime's layout (rank = s·D + r), with one part swappable for a mistake."""
    s, r = divmod(rank, D)
    previous = rank - D if s > 0 else None
    following = (next_step or (lambda: rank + D))() if s < K - 1 else None
    return s, r, previous, following, tuple(group(s, r) if group else range(s * D, s * D + D))


@pytest.mark.parametrize("K, D", [(1, 1), (1, 4), (4, 1), (2, 2), (3, 2)])
def test_consistent_mesh_accepts_the_stage_major_layout_and_the_replica_major_one(K, D):
    from minilocal.checks import consistent_mesh

    def replica_major(K, D, rank):  # another consistent mesh: the values' check tells it apart
        r, s = divmod(rank, K)
        return (s, r, rank - 1 if s else None, rank + 1 if s < K - 1 else None,
                tuple(q * K + s for q in range(D)))
    assert consistent_mesh(stage_major, (K, D, 0)) is None
    assert consistent_mesh(replica_major, (K, D, 0)) is None


@pytest.mark.parametrize("wrong, message", [
    (lambda K, D, q: (0, 0, None, None, (q,)), r"result\[:2\] is \(0, 0\) for ranks 0 and 1"),
    (lambda K, D, q: stage_major(K, D, q, next_step=lambda: q + 1),
     r"result\[3\] is 1 for rank 0 .*but rank 1's result\[2\] is None, not 0"),
    (lambda K, D, q: stage_major(K, D, q, next_step=lambda: q + D + 4),
     r"result\[3\] is 6 for rank 0, but a 2 x 2 mesh has ranks 0-3"),
    (lambda K, D, q: stage_major(K, D, q, group=lambda s, r: range(s, s + D)),
     r"result\[4\] is \(1, 2\) for rank 2, but rank 1's result\[4\] is \(0, 1\)"),
    (lambda K, D, q: stage_major(K, D, q, group=lambda s, r: [s * D + (r + 1) % D]),
     r"result\[4\] is \(1,\) for rank 0, which does not hold rank 0"),
    (lambda K, D, q: stage_major(K, D, q) if q < 3 else 1 / 0,
     r"it raised ZeroDivisionError for rank 3 of a 2 x 2 mesh"),
])
def test_consistent_mesh_names_the_rank_and_the_part_that_disagree(wrong, message):
    from minilocal.checks import consistent_mesh
    assert re.search(message, consistent_mesh(wrong, (2, 2, 0)))
    with pytest.raises(AssertionError, match=r"Exercise 1\.3: FAIL on case 0: " + message):
        check("1.3", wrong, stage_major, [(2, 2, 0)], concepts=[consistent_mesh])


def test_consistent_mesh_leaves_other_structures_to_the_values_check():
    from minilocal.checks import consistent_mesh
    assert consistent_mesh(lambda K, D, q: (q // D, q % D), (2, 2, 0)) is None
    assert consistent_mesh(lambda K, D, q: (0, q, "a", None, ()), (1, 2, 0)) is None
