"""The plan explorer: pick a method, chunks and overlap; the diagram and ``plan.describe()`` follow.

A headless run (nbval, nbclient) never moves a slider, and nbval cannot compare a widget's view.
So a notebook shows the default once with ``show_plan(plan)`` (deterministic output,
compared by nbval) and builds ``plan_explorer()`` in a cell tagged ``nbval-ignore-output``.
Building the explorer never waits for a front end, so it cannot block a headless run.

The explorer's view is a text widget and an Image widget holding a PNG, drawn on an off-pyplot
Figure (``plots.offscreen_figure``). Widget callbacks run on the kernel's comm or subshell threads
while cells run on the main one, and pyplot's state is not thread-safe; setting a widget's value
from any thread is. The first picture is drawn when the explorer is built, so the front end gets it
with the widget's state and shows it at once.

The same choices can be written as a short text spec, ``"chunks=2,overlap=1"`` (or a method name),
which is how the explorer's "general" method and the course's comparison tables name a plan.
"""
from __future__ import annotations

import html
import threading

import ipywidgets as widgets
import matplotlib.pyplot as plt

from ..plan import Plan
from .plots import MAX_DIAGRAM_BLOCKS, offscreen_figure, plan_figsize, plot_plan, png_bytes, png_size
from ..validate import check_choice, check_int

METHODS = ("backprop", "greedy", "overlapping", "chunked", "general")


def _check_n_blocks(n_blocks, where):
    return check_int(where, "n_blocks", n_blocks, 1, MAX_DIAGRAM_BLOCKS)


def parse_spec(spec: str, n_blocks: int) -> dict[str, int]:
    """``"chunks=2,overlap=1"`` or a method name -> {'chunks': int, 'overlap': int} for n_blocks.

    Missing keys default to one block per chunk (chunks = n_blocks) and no overlap; the method
    names mean: backprop = chunks=1, greedy = chunks=n_blocks, overlapping = chunks=n_blocks,overlap=1.
    The grammar is ``Plan.from_spec``'s.
    """
    plan = plan_from_spec(spec, n_blocks)
    return {"chunks": plan.n_stages, "overlap": plan.overlap}


def plan_from_spec(spec: str, n_blocks: int) -> Plan:
    """The Plan a spec names: ``n_blocks`` blocks in equal chunks with the given overlap."""
    _check_n_blocks(n_blocks, f"plan_from_spec({spec!r}, n_blocks={n_blocks!r})")
    return Plan.from_spec(spec, n_blocks)


def plan_from_choice(method: str, n_blocks: int, n_chunks: int = 2, overlap: int = 1) -> Plan:
    """The explorer's choice as a Plan; ``n_chunks`` counts only for chunked/general, ``overlap``
    only for overlapping/general."""
    check_choice("plan_from_choice", "method", method, METHODS)
    n = _check_n_blocks(n_blocks, f"plan_from_choice({method!r}, n_blocks={n_blocks!r})")
    chunks = {"backprop": 1, "greedy": n, "overlapping": n}.get(method, n_chunks)
    k = overlap if method in ("overlapping", "general") else 0
    return plan_from_spec(f"chunks={chunks},overlap={k}", n)


def show_plan(plan: Plan) -> None:
    """Print ``plan.describe()`` and draw its gradient-flow diagram (the explorer's view)."""
    print(plan.describe())
    fig, _ = plot_plan(plan)
    plt.show()
    plt.close(fig)  # inline backends close it already; a non-interactive one (Agg) does not


def plan_png(plan: Plan, dpi: float = 100) -> bytes:
    """The gradient-flow diagram of ``plan`` as PNG bytes, drawn without pyplot (any thread)."""
    fig, ax = offscreen_figure(plan_figsize(plan), dpi=dpi)
    plot_plan(plan, ax=ax)
    return png_bytes(fig)


def set_png(image: widgets.Image, png: bytes) -> None:
    """Show PNG bytes in an ``ipywidgets.Image`` at their own pixel width: a widget box would
    otherwise stretch the image to its full width, and a stretched PNG is blurry."""
    width, _ = png_size(png)
    image.layout.width, image.layout.height, image.layout.max_width = f"{width}px", "auto", "100%"
    image.value = png


def plan_explorer(n_blocks: int = 6) -> widgets.VBox:
    """A VBox of controls and a view; ``.plan`` holds the Plan on display. Display it in a cell
    tagged nbval-ignore-output (see the module docstring)."""
    n = _check_n_blocks(n_blocks, f"plan_explorer(n_blocks={n_blocks!r})")
    method = widgets.Dropdown(options=METHODS, value="overlapping", description="method")
    chunks = widgets.IntSlider(value=min(2, n), min=1, max=n, description="chunks")
    overlap = widgets.IntSlider(value=min(1, n - 1), min=0, max=n - 1, description="overlap")
    text, image = widgets.HTML(), widgets.Image(format="png")
    box = widgets.VBox([widgets.HBox([method, chunks, overlap]), text, image])
    lock = threading.Lock()  # two quick changes may run on two threads; show one choice, not a mix

    def update(change=None):
        with lock:
            chunks.disabled = method.value not in ("chunked", "general")
            overlap.disabled = method.value not in ("overlapping", "general")
            plan = plan_from_choice(method.value, n, chunks.value, overlap.value)
            text.value = f"<pre>{html.escape(plan.describe())}</pre>"
            set_png(image, plan_png(plan))
            box.plan = plan

    for control in (method, chunks, overlap):
        control.observe(update, names="value")
    update()
    return box
