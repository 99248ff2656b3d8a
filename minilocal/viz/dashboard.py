"""The live training dashboard: every stage's local loss, plotted while training runs.

    dash = Dashboard(n_stages=4, every=10)      # live in a notebook front end, silent headless
    for step in range(1, steps + 1):
        dash.log(step, net.train_step(x, y))    # K losses per step
    dash.show()                                 # one static figure and the final numbers

``log`` averages the K losses over windows of ``every`` steps, one point per window, in the
history format of the training loops (``{"step": [...], "train_loss": [[K values], ...]}``), and
draws with ``plots.plot_history`` so the stage colours match every other plot of the course.

Live or headless. A headless run (nbval, nbclient, a script) must produce the same output every
time, and a live plot cannot: its frames depend on wall-clock throttling, and nbval cannot compare
widget updates. So the live view is a widget (an Image redrawn in place through widget messages,
never new cell outputs) shown only when a front end is there to see it; headless, ``log`` draws
nothing and ``show`` draws the one final figure in both cases. A front end is "there" when the
code runs in a kernel that a Jupyter server started (it sets ``JPY_SESSION_NAME``) or in Colab;
``live=True/False`` or the environment variable ``MINILOCAL_LIVE=1/0`` decides instead. Keep the
cell that builds a Dashboard tagged ``nbval-ignore-output``: the widget is machine-dependent.
"""
from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, SupportsFloat

import matplotlib.pyplot as plt
import numpy as np

from .plots import offscreen_figure, plot_history, png_bytes
from ..validate import check_int

if TYPE_CHECKING:
    from matplotlib.axes import Axes

FIGSIZE = (6, 3.4)
LIVE_DPI = 80  # the live PNG is FIGSIZE × LIVE_DPI = 480 × 272 pixels, shown at that size


def _kernel_shell():
    """The running IPython kernel's shell, or None (plain Python, pytest, a terminal IPython)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell if shell is not None and hasattr(shell, "kernel") else None


def frontend_present() -> bool:
    """True when a live widget would be seen: MINILOCAL_LIVE=1/0 decides if set, else a kernel
    started by a Jupyter server (JPY_SESSION_NAME) or Colab. nbval and nbclient set neither."""
    forced = os.environ.get("MINILOCAL_LIVE", "").strip()
    if forced:
        if forced not in ("0", "1"):
            raise ValueError(f"MINILOCAL_LIVE must be 0 (never live) or 1 (always live), got "
                             f"{forced!r}; unset it to let the dashboard decide")
        return forced == "1"
    if _kernel_shell() is None:
        return False
    return bool(os.environ.get("JPY_SESSION_NAME")) or "google.colab" in sys.modules


class Dashboard:
    """Per-stage losses of a run: ``log(step, losses)`` each step, ``show()`` at the end.

    n_stages: K, the number of losses per step; every: steps averaged into one point;
    live: None (decide with ``frontend_present()``), True or False; min_interval: seconds between
    live redraws (drawing costs ~0.1 s, so a redraw per step would slow training down).
    """

    def __init__(self, n_stages: int, every: int = 10, title: str = "local losses per stage",
                 live: bool | None = None, min_interval: float = 0.5) -> None:
        self.n_stages = check_int("Dashboard", "n_stages", n_stages, 1)
        self.every = check_int("Dashboard", "every", every, 1)
        if not isinstance(min_interval, (int, float)) or isinstance(min_interval, bool) \
                or not min_interval >= 0:
            raise ValueError(f"Dashboard: min_interval must be a number of seconds >= 0, "
                             f"got {min_interval!r}")
        if live not in (None, True, False):
            raise ValueError(f"Dashboard: live must be None (auto), True or False, got {live!r}")
        self.title, self.min_interval = title, float(min_interval)
        self.history = {"step": [], "train_loss": []}
        self._window, self._last_step, self._last_draw = [], 0, -math.inf
        self.live = frontend_present() if live is None else live
        self.widget = self._build_widget() if self.live else None

    def _build_widget(self):
        import ipywidgets as widgets
        from IPython.display import display

        self._image = widgets.Image(format="png")
        self._status = widgets.HTML(value="waiting for the first step")
        box = widgets.VBox([self._status, self._image])
        display(box)
        return box

    def log(self, step: int, losses: Iterable[SupportsFloat]) -> None:
        """Record step ``step``'s K losses (floats or 0-d tensors); a point every ``every`` steps."""
        step = check_int("Dashboard.log", "step", step, 1)
        if step <= self._last_step:
            raise ValueError(f"Dashboard.log: steps must increase, got step {step} after step "
                             f"{self._last_step}; start a new Dashboard for a new run")
        values = [float(v) for v in losses]
        if len(values) != self.n_stages:
            raise ValueError(f"Dashboard.log: expected {self.n_stages} losses (one per stage), got "
                             f"{len(values)}: {values}; build the Dashboard with n_stages={len(values)}")
        self._last_step = step
        self._window.append(values)
        if step % self.every == 0:
            self._flush()
            if self.live:
                self._redraw()

    def _flush(self):
        """Close the current window: its mean becomes one point of the history."""
        if self._window:
            self.history["step"].append(self._last_step)
            self.history["train_loss"].append([float(v) for v in np.mean(self._window, axis=0)])
            self._window = []

    def draw(self, ax: Axes) -> None:
        """Plot the per-stage curves of the history on ``ax``."""
        plot_history(self.history, ax=ax, metric="train_loss")
        ax.set_title(self.title, fontsize=10)

    def _redraw(self, force=False):
        now = time.monotonic()
        if not force and now - self._last_draw < self.min_interval:
            return
        self._last_draw = now
        from .widgets import set_png

        fig, ax = offscreen_figure(FIGSIZE, dpi=LIVE_DPI)  # not pyplot's: the inline backend must not show it
        self.draw(ax)
        fig.tight_layout()
        set_png(self._image, png_bytes(fig))
        self._status.value = "step " + str(self._last_step) + ": " + self.summary()

    def summary(self) -> str:
        """The latest point as text, e.g. 'l0 1.234  l1 0.987' (three decimals)."""
        if not self.history["step"]:
            return "no steps logged yet"
        return "  ".join(f"l{s} {v:.3f}" for s, v in enumerate(self.history["train_loss"][-1]))

    def show(self) -> None:
        """Close the last window, print the final per-stage losses and draw the static figure."""
        if not self.history["step"] and not self._window:
            raise ValueError("Dashboard.show: nothing was logged; call dash.log(step, losses) "
                             "during training first")
        self._flush()
        if self.live:
            self._redraw(force=True)
        print(f"step {self.history['step'][-1]}: {self.summary()}")
        fig, ax = plt.subplots(figsize=FIGSIZE)
        self.draw(ax)
        fig.tight_layout()
        plt.show()
        plt.close(fig)
