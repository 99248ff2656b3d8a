"""Exercise checks: run a student's function on fixed inputs against the reference.

``check(exercise, student_fn, reference_fn, cases)`` prints PASS with the tolerance met,
raises ``AssertionError`` on a wrong answer (loudly, with the numbers), and when the student's
function raises ``NotImplementedError`` says the exercise is not done yet and returns the
reference, so the rest of the notebook keeps running. It returns the function to use from then on.
"""
import copy

import numpy as np


def _as_arrays(value):
    """Flatten a result (array, scalar, tensor, tuple/list/dict of those) into a list of arrays."""
    if isinstance(value, dict):
        return [a for k in sorted(value) for a in _as_arrays(value[k])]
    if isinstance(value, (tuple, list)):
        return [a for v in value for a in _as_arrays(v)]
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return [np.asarray(value, dtype=np.float64)]


def max_rel_error(got, want):
    """Largest elementwise |got - want| / max(|got| + |want|, 1e-8) over all returned arrays."""
    want_arrays = _as_arrays(want)
    try:
        got_arrays = _as_arrays(got)
    except (TypeError, ValueError) as e:
        raise AssertionError(f"returned something that is not numbers ({e})") from None
    if len(got_arrays) != len(want_arrays):
        raise AssertionError(f"returned {len(got_arrays)} arrays, expected {len(want_arrays)}")
    errors = [0.0]
    for i, (g, w) in enumerate(zip(got_arrays, want_arrays)):
        if g.shape != w.shape:
            raise AssertionError(f"output {i} has shape {g.shape}, expected {w.shape}")
        if g.size:
            errors.append(np.max(np.abs(g - w) / np.maximum(np.abs(g) + np.abs(w), 1e-8)))
    return float(np.max(errors))  # np.max, not max(): a NaN anywhere must make the answer NaN


def _check_arguments(exercise, cases, tol):
    where = f"check({exercise!r}, ...)"
    if not isinstance(cases, (list, tuple)) or not cases:
        raise TypeError(f"{where}: cases must be a non-empty list of argument tuples, e.g. "
                        f"[(x,), (x2,)], got {type(cases).__name__} {cases!r:.60}")
    for i, args in enumerate(cases):
        if not isinstance(args, tuple):
            raise TypeError(f"{where}: case {i} must be a tuple of arguments, got "
                            f"{type(args).__name__}; write a one-argument case as (x,)")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0:
        raise ValueError(f"{where}: tol must be a positive number such as 1e-7, got {tol!r}")


def check(exercise, student_fn, reference_fn, cases, tol=1e-6, compare=None, copy_args=False):
    """Compare ``student_fn(*case)`` with ``reference_fn(*case)`` for every case (a tuple of args).

    ``compare`` (optional) maps a result to the part that must match, e.g. ``lambda r: r[0]`` to
    ignore a cache whose layout is the student's choice. The reference answer is copied before the
    student's function runs, so editing an input in place cannot change what it is compared with.
    ``copy_args=True`` gives each function its own deep copy of a case's arguments: use it when the
    exercise updates its arguments (an optimizer step), so both start from the same state.
    Returns ``student_fn`` when it passes, ``reference_fn`` when it is not implemented yet.
    """
    _check_arguments(exercise, cases, tol)
    select = compare or (lambda result: result)
    worst = 0.0
    for i, args in enumerate(cases):
        # Not deep-copied by default: arguments may be closures over each other (f and x in a
        # numerical gradient), and a copy of x would no longer be the x that f reads.
        fresh = copy.deepcopy if copy_args else (lambda a: a)
        want = [a.copy() for a in _as_arrays(select(reference_fn(*fresh(args))))]
        try:
            got = student_fn(*fresh(args))
        except NotImplementedError:
            print(f"Exercise {exercise}: not done yet -> using the reference implementation")
            return reference_fn
        try:
            err = max_rel_error(select(got), want)
        except AssertionError as e:
            raise AssertionError(f"Exercise {exercise}: FAIL on case {i}: {e}") from None
        if not err <= tol:
            raise AssertionError(f"Exercise {exercise}: FAIL on case {i}: relative error {err:.2e} "
                                 f"> tolerance {tol:.0e}")
        worst = max(worst, err)
    # No error figure in the PASS line: its digits (even its decade) depend on the CPU and the BLAS
    # build, and the line is compared on every student's machine. The tolerance is what passed.
    print(f"Exercise {exercise}: PASS ({len(cases)} case{'s' * (len(cases) > 1)} within tolerance {tol:.0e})")
    return student_fn
