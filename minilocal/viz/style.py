"""The course's one set of colours, so a stage, a method or a kind of work looks the same in
every figure.

* ``stage_color(s)``: stage s (its head, loss, bracket and learning curve): matplotlib's tab10.
* ``method_color(name)``: a training method, keyed by its name ("backprop", "greedy",
  "overlapping", "chunked(2)", "gpipe", ...): the methods of the course keep fixed colours, any
  other name takes the next free colour of the tab10 cycle in the order first asked.
* ``KIND_COLORS``: the kinds of a timeline's events (compute, communication, idle).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib

if TYPE_CHECKING:
    import numpy as np

KIND_COLORS = {"forward": "#4C72B0", "backward": "#DD8452", "update": "#55A868",
               "send": "#8172B3", "recv": "#B07AA1", "reduce": "#C44E52", "idle": "#DDDDDD"}

_TAB10 = [matplotlib.colors.to_hex(matplotlib.colormaps["tab10"](i)) for i in range(10)]
_METHODS = {"backprop": _TAB10[0], "greedy": _TAB10[1], "overlapping": _TAB10[2],
            "chunked": _TAB10[3], "gpipe": _TAB10[4], "1f1b": _TAB10[5]}
_others = {}


def stage_color(s: int) -> tuple[np.float64, np.float64, np.float64, np.float64]:
    """The colour of stage s (and of its head, loss, bracket and curve): matplotlib's tab10 cycle,
    as an RGBA tuple."""
    return matplotlib.colormaps["tab10"](s % 10)


def method_color(name: str) -> str:
    """The colour of a method: fixed for the course's methods ("chunked(3)" is a chunked plan:
    the chunked colour), the next unused tab10 colour for any other name."""
    key = str(name).split("(")[0].strip().lower()
    if key in _METHODS:
        return _METHODS[key]
    if name not in _others:
        free = [c for c in _TAB10 if c not in _METHODS.values() and c not in _others.values()]
        _others[name] = free[0] if free else _TAB10[len(_others) % 10]
    return _others[name]
