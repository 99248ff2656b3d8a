"""Argument checks at the API boundary: one signature, one exception policy, one wording.

Every checker is ``check_*(where, name, value, ...)`` and returns the value it accepts. A value of
the wrong *type* raises TypeError, a value of the right type but out of range raises ValueError.
The message names the call (``where``), the argument, the valid range and the value it got:

    >>> check_int("Plan.chunked(4, n_chunks=5)", "n_chunks", 5, 1, 4)
    Traceback (most recent call last):
    ValueError: Plan.chunked(4, n_chunks=5): n_chunks must be between 1 and 4, got 5

Pure Python (no numpy or torch), so the Plan can use it; numpy integers pass as ints because
they register as ``numbers.Integral``.
"""
from __future__ import annotations

import numbers
from collections.abc import Collection
from typing import Literal, TypeVar, overload

_T = TypeVar("_T")


def is_int(value: object) -> bool:
    """True for an int (numpy ints too), False for bool and everything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _fail(where, message, fix=""):
    return f"{where}: {message}" + (f"; {fix}" if fix else "")


@overload  # without none_ok the result is an int; with none_ok=True it may be None
def check_int(where: str, name: str, value: object, low: int | None = None,
              high: int | None = None, *, high_name: str | None = None,
              none_ok: Literal[False] = False, fix: str = "") -> int: ...


@overload
def check_int(where: str, name: str, value: object, low: int | None = None,
              high: int | None = None, *, high_name: str | None = None, none_ok: bool,
              fix: str = "") -> int | None: ...


def check_int(where: str, name: str, value: object, low: int | None = None,
              high: int | None = None, *, high_name: str | None = None, none_ok: bool = False,
              fix: str = "") -> int | None:
    """``int(value)`` if it is an int in [low, high] (either bound may be None); else an error.

    ``high_name`` says where the upper bound comes from: ``n_chunks must be between 1 and
    n_blocks (4)``. ``none_ok`` lets None through (an optional argument). ``fix`` is appended.
    """
    if none_ok and value is None:
        return None
    if not is_int(value):
        got = f"{value!r} ({type(value).__name__})"
        raise TypeError(_fail(where, f"{name} must be an int{' or None' if none_ok else ''}, got {got}",
                              fix))
    top = high if high_name is None else f"{high_name} ({high})"
    if low is not None and high is not None and not low <= value <= high:
        raise ValueError(_fail(where, f"{name} must be between {low} and {top}, got {value}", fix))
    if low is not None and value < low:
        raise ValueError(_fail(where, f"{name} must be an int >= {low}, got {value}", fix))
    if high is not None and value > high:
        raise ValueError(_fail(where, f"{name} must be an int <= {top}, got {value}", fix))
    return int(value)


@overload
def check_positive(where: str, name: str, value: object, *, none_ok: Literal[False] = False,
                   fix: str = "") -> float: ...


@overload
def check_positive(where: str, name: str, value: object, *, none_ok: bool,
                   fix: str = "") -> float | None: ...


def check_positive(where: str, name: str, value: object, *, none_ok: bool = False,
                   fix: str = "") -> float | None:
    """``value`` if it is a real number > 0 (int or float, not bool); else an error."""
    if none_ok and value is None:
        return None
    if not _is_real(value):
        raise TypeError(_fail(where, f"{name} must be a positive number"
                              f"{' or None' if none_ok else ''}, got {value!r} "
                              f"({type(value).__name__})", fix))
    if not value > 0:  # also refuses NaN
        raise ValueError(_fail(where, f"{name} must be a positive number, got {value!r}", fix))
    return value


def check_choice(where: str, name: str, value: _T, choices: Collection[object], *,
                 fix: str = "") -> _T:
    """``value`` if it is one of ``choices``; else a ValueError listing them."""
    if value not in choices:
        raise ValueError(_fail(where, f"{name} must be one of {list(choices)}, got {value!r}", fix))
    return value
