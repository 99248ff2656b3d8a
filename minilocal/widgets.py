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
import html
import threading

import ipywidgets as widgets
import matplotlib.pyplot as plt

from .plan import Plan
from .plots import MAX_DIAGRAM_BLOCKS, offscreen_figure, plan_figsize, plot_plan, png_bytes, png_size

METHODS = ("backprop", "greedy", "overlapping", "chunked", "general")
SPEC_KEYS = ("chunks", "overlap")


def _check_n_blocks(n_blocks, where):
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or not 1 <= n_blocks <= MAX_DIAGRAM_BLOCKS:
        raise ValueError(f"{where}: n_blocks must be an int between 1 and {MAX_DIAGRAM_BLOCKS}, "
                         f"got {n_blocks!r}")
    return n_blocks


def _name(n_blocks, chunks, overlap):
    """The usual name of the plan with ``chunks`` equal chunks and ``overlap``."""
    if chunks == 1:
        return "backprop"  # one stage: nothing before block 0 to overlap with
    if chunks == n_blocks:
        return "overlapping" if overlap else "greedy"
    return f"chunked({chunks})" + (f", overlap {overlap}" if overlap else "")


def parse_spec(spec, n_blocks):
    """``"chunks=2,overlap=1"`` or a method name -> {'chunks': int, 'overlap': int} for n_blocks.

    Missing keys default to one block per chunk (chunks = n_blocks) and no overlap; the method
    names mean: backprop = chunks=1, greedy = chunks=n_blocks, overlapping = chunks=n_blocks,overlap=1.
    """
    where = f"parse_spec({spec!r}, n_blocks={n_blocks!r})"
    n = _check_n_blocks(n_blocks, where)
    if not isinstance(spec, str):
        raise TypeError(f"{where}: spec must be a string such as 'chunks=2,overlap=1', "
                        f"got {type(spec).__name__}")
    text = spec.replace(" ", "").lower()
    named = {"backprop": "chunks=1", "greedy": f"chunks={n}", "overlapping": f"chunks={n},overlap=1"}
    text = named.get(text, text)
    if not text:
        raise ValueError(f"{where}: spec is empty; write e.g. 'chunks=2,overlap=1' or 'greedy'")
    values = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{where}: {item!r} is not key=value; write e.g. 'chunks=2,overlap=1' "
                             f"or one of the names {sorted(named)}")
        if key not in SPEC_KEYS:
            raise ValueError(f"{where}: unknown key {key!r}; the keys are {list(SPEC_KEYS)}")
        if key in values:
            raise ValueError(f"{where}: {key!r} is given twice; give each key once")
        if not value.isdigit():
            raise ValueError(f"{where}: {key} must be a whole number, got {value!r}")
        values[key] = int(value)
    out = {"chunks": values.get("chunks", n), "overlap": values.get("overlap", 0)}
    if not 1 <= out["chunks"] <= n:
        raise ValueError(f"{where}: chunks must be between 1 and n_blocks ({n}), got {out['chunks']}")
    if out["overlap"] > n - 1:
        raise ValueError(f"{where}: overlap must be between 0 and n_blocks - 1 ({n - 1}), "
                         f"got {out['overlap']}")
    return out


def plan_from_spec(spec, n_blocks):
    """The Plan a spec names: ``n_blocks`` blocks in equal chunks with the given overlap."""
    args = parse_spec(spec, n_blocks)
    stages = Plan.chunked(n_blocks, args["chunks"]).stages
    return Plan(stages, args["overlap"], name=_name(n_blocks, args["chunks"], args["overlap"]))


def plan_from_choice(method, n_blocks, n_chunks=2, overlap=1):
    """The explorer's choice as a Plan; ``n_chunks`` counts only for chunked/general, ``overlap``
    only for overlapping/general."""
    if method not in METHODS:
        raise ValueError(f"plan_from_choice: method must be one of {list(METHODS)}, got {method!r}")
    n = _check_n_blocks(n_blocks, f"plan_from_choice({method!r}, n_blocks={n_blocks!r})")
    chunks = {"backprop": 1, "greedy": n, "overlapping": n}.get(method, n_chunks)
    k = overlap if method in ("overlapping", "general") else 0
    return plan_from_spec(f"chunks={chunks},overlap={k}", n)


def show_plan(plan):
    """Print ``plan.describe()`` and draw its gradient-flow diagram (the explorer's view)."""
    print(plan.describe())
    fig, _ = plot_plan(plan)
    plt.show()
    plt.close(fig)  # inline backends close it already; a non-interactive one (Agg) does not


def plan_png(plan, dpi=100):
    """The gradient-flow diagram of ``plan`` as PNG bytes, drawn without pyplot (any thread)."""
    fig, ax = offscreen_figure(plan_figsize(plan), dpi=dpi)
    plot_plan(plan, ax=ax)
    return png_bytes(fig)


def set_png(image, png):
    """Show PNG bytes in an ``ipywidgets.Image`` at their own pixel width: a widget box would
    otherwise stretch the image to its full width, and a stretched PNG is blurry."""
    width, _ = png_size(png)
    image.layout.width, image.layout.height, image.layout.max_width = f"{width}px", "auto", "100%"
    image.value = png


def plan_explorer(n_blocks=6):
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
