"""The gradient-similarity plot (``minilocal.compute.similarity``): the cosine of each block's
local gradient to backprop's over training; returns ``(fig, ax)``."""
from .style import stage_color


def plot_similarity(history, title=None):
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
