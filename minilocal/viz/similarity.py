"""The gradient-similarity plot (``minilocal.compute.similarity``): the cosine of each block's
local gradient to backprop's over training; returns ``(fig, ax)``."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .style import stage_color

if TYPE_CHECKING:  # pyplot is imported only when the plot is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def plot_similarity(history: Mapping[str, Sequence[Any]],
                    title: str | None = None) -> tuple[Figure, Axes]:
    """Cosine to the backprop gradient vs training step, one line per block; returns
    ``(fig, ax)``."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    per_block = list(zip(*history["cosine"]))
    for b, values in enumerate(per_block):
        ax.plot(history["step"], values, "o-", ms=3, color=stage_color(b), label=f"block {b}")
    ax.axhline(0, color="gray", lw=0.8)
    ax.set(xlabel="training step", ylabel="cos(local grad, backprop grad)", ylim=(-1.05, 1.05),
           title=title or "gradient similarity to backprop")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig, ax
