"""Exercise checks: run a student's function on fixed inputs against the reference.

``check(exercise, student_fn, reference_fn, cases)`` prints PASS with the tolerance met, raises
``AssertionError`` on a wrong answer, and when the student's function raises
``NotImplementedError`` says the exercise is not done yet and returns the reference, so the rest
of the notebook keeps running. It returns the function to use from then on.

A result is compared structure first (None, tuple length, dict keys by name, number kind, shape),
then values: integers and booleans exactly, floats to a relative tolerance. A failure names the
case, the place in the result (``result[1]["weight"]``), the worst entry, the expected and the
returned value, and the case's inputs. Inputs must come back unchanged, bit for bit (unless
``copy_args``). Where a concept does not show in the numbers, ``concepts`` checks it directly.
"""
from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from numpy.typing import ArrayLike

from ..numpy_core.gradcheck import rel_error

_F = TypeVar("_F", bound=Callable[..., Any])
Case = tuple[Any, ...]  # the positional arguments of one call
Concept = Callable[[Callable[..., Any], Case], str | None]  # (student_fn, args) -> a message or None

KINDS = {"b": "booleans", "i": "integers", "u": "integers", "f": "floats"}


def _numeric(value):
    """``value`` as a NumPy array if it is a number, an array or a tensor, else None."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
        return value.detach().cpu().numpy()
    if isinstance(value, (bool, int, float, complex, np.number, np.bool_, np.ndarray)):
        return np.asarray(value)
    return None


def _frozen(value):
    """A copy of a result that later in-place edits cannot change (tensors become arrays)."""
    if isinstance(value, dict):
        return {k: _frozen(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_frozen(v) for v in value)
    array = _numeric(value)
    return value if array is None else array.copy()


def describe(value: object, width: int = 60) -> str:
    """A short description of a value for a message: type, shape and first entries."""
    if value is None:
        return "None"
    array = _numeric(value)
    if array is not None:
        if array.ndim == 0:
            return repr(array.item())
        head = ", ".join(f"{v:.4g}" if array.dtype.kind in "fc" else str(v) for v in array.ravel()[:4])
        more = ", ..." if array.size > 4 else ""
        kind = "tensor" if hasattr(value, "detach") else "array"
        return f"{kind} {tuple(array.shape)} {array.dtype} [{head}{more}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {describe(v, 30)}" for k, v in list(value.items())[:3]) + \
            (", ..." if len(value) > 3 else "") + "}"
    if isinstance(value, (tuple, list)) and len(value) <= 4:
        inner = ", ".join(describe(v, 30) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__} of {len(value)}: {describe(value[:3], width)[:-1]}, ...]"
    if callable(value) and not hasattr(value, "parameters"):
        return f"<function {getattr(value, '__name__', '?')}>"
    text = repr(value)
    if "\n" in text and hasattr(value, "parameters"):  # a multi-line nn.Module
        text = f"{type(value).__name__} ({sum(p.numel() for p in value.parameters())} parameters)"
    text = text.split("\n")[0]
    return text if len(text) <= width else text[:width - 3] + "..."


def outline(value: object, depth: int = 3) -> str:
    """The structure of a value without its numbers: ``(array (4, 2), dict {weight, bias})``."""
    array = _numeric(value)
    if array is not None:
        return repr(array.item()) if array.ndim == 0 else f"array {tuple(array.shape)}"
    if isinstance(value, dict):
        return "dict {" + ", ".join(map(str, value)) + "}" if depth else "dict"
    if isinstance(value, (tuple, list)):
        if not depth or len(value) > 6:
            return f"{type(value).__name__} of {len(value)}"
        inner = ", ".join(outline(v, depth - 1) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    return describe(value, 40)


def _digits(err):
    """Significant digits that show a relative difference of ``err``."""
    return int(min(17, max(6, 2 - np.floor(np.log10(err))))) if 0 < err < 1 else 6


def _kind_ok(got, want):
    """Whether an array of dtype kind ``got`` may stand for one of kind ``want``."""
    g, w = ("i" if k == "u" else k for k in (got, want))
    return g == w or (w == "f" and g == "i")  # an exact integer may stand for a float


def _worst_entry(g, w):
    """(index, relative error) of the worst entry of float arrays ``g`` against ``w``."""
    with np.errstate(invalid="ignore"):
        rel = np.abs(g - w) / np.maximum(np.abs(g) + np.abs(w), 1e-8)
    rel = np.where(np.isnan(rel) & ~(np.isnan(g) & np.isnan(w)), np.inf, np.nan_to_num(rel, nan=0.0))
    flat = int(np.argmax(rel))
    return np.unravel_index(flat, g.shape), float(rel.ravel()[flat])


def _index(index):
    return "[" + ", ".join(str(int(i)) for i in index) + "]"


def compare(got: object, want: object, tol: float, where: str = "result") -> None:
    """Raise ``AssertionError`` saying where and how ``got`` first differs from ``want``."""
    if want is None or got is None:
        if got is None and want is not None:
            raise AssertionError(f"{where} is None, expected {outline(want)}: is a `return` missing?")
        if got is not None:
            raise AssertionError(f"{where} is {describe(got)}, expected None")
        return
    if isinstance(want, dict):
        if not isinstance(got, dict):
            raise AssertionError(f"{where} is {describe(got)}, expected a dict with keys {sorted(map(str, want))}")
        missing = [k for k in want if k not in got]
        unexpected = [k for k in got if k not in want]
        if missing or unexpected:
            parts = [f"missing keys {missing}" if missing else "", f"unexpected keys {unexpected}" if unexpected else ""]
            raise AssertionError(f"{where} has {' and '.join(p for p in parts if p)}; expected exactly "
                                 f"{list(want)}")
        for key in want:
            compare(got[key], want[key], tol, f"{where}[{key!r}]")
        return
    if isinstance(want, (tuple, list)):
        array = _numeric(got)
        flat = all(_numeric(v) is not None and np.ndim(_numeric(v)) == 0 for v in want)
        if flat and array is not None and array.ndim == 1:  # an array may stand for a list of numbers
            got = list(got)
        if not isinstance(got, (tuple, list)):
            raise AssertionError(f"{where} is {describe(got)}, expected a {type(want).__name__} of "
                                 f"{len(want)}: {outline(want)}")
        if len(got) != len(want):
            raise AssertionError(f"{where} has {len(got)} entries {outline(got)}, expected {len(want)}: "
                                 f"{outline(want)}")
        for i, (g, w) in enumerate(zip(got, want)):
            compare(g, w, tol, f"{where}[{i}]")
        return
    w = _numeric(want)
    if w is None:  # a Plan, a string, a dataclass: equal or not
        if not got == want:
            raise AssertionError(f"{where} is {describe(got)}, expected {describe(want)}")
        return
    g = _numeric(got)
    if g is None and isinstance(got, (tuple, list)) and all(_numeric(v) is not None for v in got):
        g = np.asarray([_numeric(v) for v in got])  # a list of numbers may stand for an array
    if g is None or g.dtype.kind not in KINDS:
        raise AssertionError(f"{where} is {outline(got)}, expected numbers: {describe(want)}")
    if not _kind_ok(g.dtype.kind, w.dtype.kind):
        raise AssertionError(f"{where} holds {KINDS[g.dtype.kind]} ({g.dtype}), expected "
                             f"{KINDS[w.dtype.kind]}: {describe(want)}")
    if g.shape != w.shape:
        scalar = " (a scalar: use float(...) or .item())" if w.shape == () else ""
        raise AssertionError(f"{where} has shape {g.shape}, expected {w.shape}{scalar}")
    if g.size == 0:
        return
    if w.dtype.kind in "biu":
        if not np.array_equal(g, w):
            index = tuple(np.argwhere(g != w)[0])
            at = f" at {_index(index)}" if index else ""
            raise AssertionError(f"{where}{at} is {g[index].item()}, expected {w[index].item()} "
                                 f"(compared exactly)")
        return
    g, w = g.astype(np.float64), w.astype(np.float64)
    index, err = _worst_entry(g, w)
    at = f" at {_index(index)}" if index else ""
    if np.isnan(g[index]):
        raise AssertionError(f"{where}{at} is NaN, expected {w[index].item():.6g}")
    if not err <= tol:
        d = _digits(err)
        raise AssertionError(f"{where}{at} is {g[index].item():.{d}g}, expected {w[index].item():.{d}g}: "
                             f"relative error {err:.2e} > tolerance {tol:.0e}")


def max_rel_error(got: ArrayLike, want: ArrayLike) -> float:
    """Largest elementwise |got - want| / max(|got| + |want|, 1e-8) over matching arrays (NaN-aware)."""
    g, w = (np.asarray(v if _numeric(v) is None else _numeric(v), dtype=np.float64) for v in (got, want))
    if g.shape != w.shape:
        raise AssertionError(f"shape {g.shape}, expected {w.shape}")
    return rel_error(g, w)  # the one relative error of the package


def _arrays_in(args):
    """(name path, array-like) for every array or tensor in a case, one container level deep."""
    found = []
    for i, a in enumerate(args):
        inner = a.items() if isinstance(a, dict) else enumerate(a) if isinstance(a, (tuple, list)) else []
        for key, v in [(None, a), *inner]:
            if _numeric(v) is not None and not isinstance(v, (bool, int, float, complex)):
                found.append((i, key, v))
    return found


def _changed_input(args, before, names):
    """A message naming the first array of a case changed by the call, or None."""
    for (i, key, value), old in zip(_arrays_in(args), before):
        new = _numeric(value)
        if new.shape != old.shape or new.tobytes() != old.tobytes():
            name = names[i] + (f"[{key!r}]" if key is not None else "")
            where = ""
            if new.shape == old.shape:
                index = tuple(np.argwhere(new != old)[0]) if (new != old).any() else ()
                where = f" (entry {_index(index)} was {old[index].item()!r}, is now {new[index].item()!r})"
            return (f"changed its input {name} in place{where}: inputs must come back bit for bit; "
                    f"save a value before changing it and put the saved value back (x[i] = old)")
    return None


def _names(fn, args):
    """Parameter names for a case's arguments (``arg0``... when the signature cannot tell)."""
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        params = []
    return [params[i] if i < len(params) else f"arg{i}" for i in range(len(args))]


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


def check(exercise: str, student_fn: _F, reference_fn: _F, cases: list[Case] | tuple[Case, ...],
          tol: float = 1e-6, compare: Callable[[Any], Any] | None = None, copy_args: bool = False,
          concepts: Sequence[Concept] = ()) -> _F:
    """Compare ``student_fn(*case)`` with ``reference_fn(*case)`` for every case (a tuple of args).

    ``compare`` (optional) maps a result to the part that must match, e.g. ``lambda r: r[0]``.
    ``copy_args=True`` gives each function its own deep copy of a case's arguments: use it when
    the exercise updates its arguments (an optimizer step), so both start from the same state.
    ``concepts``: functions ``(student_fn, args) -> None or a message`` for what the numbers
    cannot show (a stop-gradient, one optimizer per stage), run on each case before its values.
    An exception from the student's function (other than NotImplementedError) is a FAIL too.
    Returns ``student_fn`` when it passes, ``reference_fn`` when it is not implemented yet.
    """
    _check_arguments(exercise, cases, tol)
    select = compare or (lambda result: result)
    fresh = copy.deepcopy if copy_args else (lambda a: a)
    for i, args in enumerate(cases):
        # Not deep-copied by default: arguments may be closures over each other (f and x in a
        # numerical gradient), and a copy of x would no longer be the x that f reads.
        want = _frozen(select(reference_fn(*fresh(args))))
        mine = fresh(args)
        before = [_numeric(v).copy() for _, _, v in _arrays_in(mine)]
        names = _names(student_fn, args)
        try:
            try:
                got = student_fn(*mine)
            except NotImplementedError:
                print(f"Exercise {exercise}: not done yet -> using the reference implementation")
                return reference_fn
            except Exception as e:  # the traceback above this message points into the student's code
                raise AssertionError(f"it raised {type(e).__name__}: {e}") from e
            problem = None if copy_args else _changed_input(mine, before, names)
            for concept in concepts:  # before the values: a concept's message says more than a number
                problem = problem or concept(student_fn, fresh(args))
            if problem:
                raise AssertionError(problem)
            _compare(select(got), want, tol)
        except AssertionError as e:
            inputs = ", ".join(f"{n}={describe(a)}" for n, a in zip(names, args))
            which = f"case {i} (cases 0-{len(cases) - 1})" if len(cases) > 1 else "case 0"
            raise AssertionError(f"Exercise {exercise}: FAIL on {which}: {e}\n  inputs: {inputs}") \
                from e.__cause__
    # No error figure in the PASS line: its digits (even its decade) depend on the CPU and the BLAS
    # build, and the line is compared on every student's machine. The tolerance is what passed.
    print(f"Exercise {exercise}: PASS ({len(cases)} case{'s' * (len(cases) > 1)} within tolerance {tol:.0e})")
    return student_fn


_compare = compare  # check's parameter ``compare`` shadows the function inside check


# the concept checks (what a right number can hide) live in concepts.py; notebooks import them here
from .concepts import consistent_mesh, own_stage_optimizers, stops_gradient  # noqa: E402,F401
