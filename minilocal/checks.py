"""Exercise checks: run a student's function on fixed inputs against the reference.

``check(exercise, student_fn, reference_fn, cases)`` prints PASS with the error and the tolerance,
raises ``AssertionError`` on a wrong answer (loudly, with the numbers), and when the student's
function raises ``NotImplementedError`` says the exercise is not done yet and returns the
reference, so the rest of the notebook keeps running. It returns the function to use from then on.
"""
import math

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
    got_arrays, want_arrays = _as_arrays(got), _as_arrays(want)
    if len(got_arrays) != len(want_arrays):
        raise AssertionError(f"returned {len(got_arrays)} arrays, expected {len(want_arrays)}")
    worst = 0.0
    for i, (g, w) in enumerate(zip(got_arrays, want_arrays)):
        if g.shape != w.shape:
            raise AssertionError(f"output {i} has shape {g.shape}, expected {w.shape}")
        if g.size:
            worst = max(worst, float(np.max(np.abs(g - w) / np.maximum(np.abs(g) + np.abs(w), 1e-8))))
    return worst


def check(exercise, student_fn, reference_fn, cases, tol=1e-6):
    """Compare ``student_fn(*case)`` with ``reference_fn(*case)`` for every case (a tuple of args).

    Returns ``student_fn`` when it passes, ``reference_fn`` when it is not implemented yet.
    """
    worst = 0.0
    for i, args in enumerate(cases):
        want = reference_fn(*args)
        try:
            got = student_fn(*args)
        except NotImplementedError:
            print(f"Exercise {exercise}: not done yet -> using the reference implementation")
            return reference_fn
        try:
            err = max_rel_error(got, want)
        except AssertionError as e:
            raise AssertionError(f"Exercise {exercise}: FAIL on case {i}: {e}") from None
        if not err <= tol:
            raise AssertionError(f"Exercise {exercise}: FAIL on case {i}: relative error {err:.2e} "
                                 f"> tolerance {tol:.0e}")
        worst = max(worst, err)
    # A decade bound, not the raw number: the last digits differ between BLAS builds.
    bound = 10.0 ** max(-12, math.ceil(math.log10(worst))) if worst > 0 else 1e-12
    print(f"Exercise {exercise}: PASS (relative error < {bound:.0e}, tolerance {tol:.0e})")
    return student_fn
