"""Exercise checks: max_rel_error on hand-worked values, and check's pass / fail / not-done paths."""
import numpy as np
import pytest
import torch

from minilocal.checks import check, max_rel_error


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


def test_max_rel_error_walks_tuples_dicts_and_tensors():
    got = ({"b": np.array([1.0]), "a": torch.tensor([2.0])}, 3.0)
    want = ({"a": np.array([2.0]), "b": np.array([1.5])}, 3.0)
    assert max_rel_error(got, want) == pytest.approx(0.5 / 2.5)   # only b differs


def test_max_rel_error_refuses_other_counts_and_shapes():
    with pytest.raises(AssertionError, match="returned 1 arrays, expected 2"):
        max_rel_error(np.zeros(2), (np.zeros(2), np.zeros(2)))
    with pytest.raises(AssertionError, match=r"output 0 has shape \(2, 3\), expected \(3, 2\)"):
        max_rel_error(np.zeros((2, 3)), np.zeros((3, 2)))


def test_max_rel_error_is_nan_for_nan_output_anywhere():
    assert np.isnan(max_rel_error([np.nan], [1.0]))
    assert np.isnan(max_rel_error((np.array([1.0, np.nan]), 2.0), (np.array([1.0, 1.0]), 2.0)))


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
    with pytest.raises(AssertionError, match=r"Exercise 9\.1: FAIL on case 1: relative error 1\.00e\+00 "
                                             r"> tolerance 1e-06"):
        check("9.1", wrong_on_matrices, relu, CASES)


def test_wrong_shape_and_nan_fail():
    with pytest.raises(AssertionError, match=r"FAIL on case 0: output 0 has shape \(1, 3\)"):
        check("9.1", lambda x: relu(x)[None], relu, CASES)
    with pytest.raises(AssertionError, match="FAIL on case 0: relative error nan"):
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
    with pytest.raises(AssertionError, match=r"FAIL on case 0: returned something that is not numbers"):
        check("9.2", fwd, ref_fwd, CASES)


def test_an_in_place_edit_cannot_change_the_reference_answer():
    def identity(x):
        return x
    def doubles_in_place(x):
        x *= 2
        return x
    with pytest.raises(AssertionError, match="FAIL on case 0"):
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
