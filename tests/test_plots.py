"""Plots, Gantt charts and the plan explorer, headless (Agg): right artists, right data, clear errors."""
import html

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from minilocal import Plan  # noqa: E402
from minilocal.viz.plots import (final_metrics, offscreen_figure, output_curve,  # noqa: E402
                                  plan_figsize, plot_compare, plot_history, plot_plan, png_bytes,
                                  png_size)
from minilocal.runtime import Event, plot_timelines, schedule_timeline  # noqa: E402
from minilocal.viz.widgets import (parse_spec, plan_explorer, plan_from_choice,  # noqa: E402
                                    plan_from_spec, plan_png)

PLANS = [Plan.backprop(5), Plan.greedy(5), Plan.overlapping(5), Plan.chunked(5, 2),
         Plan(((0, 1), (2,), (3, 4)), overlap=2)]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def tagged(ax, kind):
    """{index: artist} for the diagram artists whose gid is '<kind>-<index>'."""
    found = {}
    for artist in ax.findobj(lambda a: (a.get_gid() or "").startswith(kind + "-")):
        found[int(artist.get_gid().split("-")[1])] = artist
    return found


def covered_blocks(ax, xmin, xmax):
    """Blocks whose box centre lies in [xmin, xmax]."""
    return tuple(sorted(b for b, box in tagged(ax, "block").items()
                        if xmin <= box.get_x() + box.get_width() / 2 <= xmax))


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.name or "general")
def test_diagram_draws_one_box_per_block_and_one_head_loss_bracket_per_stage(plan):
    _, ax = plot_plan(plan)
    assert sorted(tagged(ax, "block")) == list(range(plan.n_blocks))
    for kind in ("stage", "head", "loss", "bracket"):
        assert sorted(tagged(ax, kind)) == list(range(plan.n_stages)), kind


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.name or "general")
def test_brackets_cover_exactly_the_blocks_each_loss_trains(plan):
    _, ax = plot_plan(plan)
    boxes = tagged(ax, "block")
    for s, bracket in tagged(ax, "bracket").items():
        xs = bracket.get_xdata()
        assert covered_blocks(ax, min(xs), max(xs)) == plan.trained_by(s)
        head = tagged(ax, "head")[s]
        last = boxes[plan.stages[s][-1]]  # the head hangs under its stage's last block
        assert np.isclose(head.get_x() + head.get_width() / 2, last.get_x() + last.get_width() / 2)


def test_overlapping_brackets_are_hand_worked_and_drawn_on_different_rows():
    _, ax = plot_plan(Plan.overlapping(4))
    brackets = tagged(ax, "bracket")
    spans = [covered_blocks(ax, min(b.get_xdata()), max(b.get_xdata())) for _, b in sorted(brackets.items())]
    assert spans == [(0,), (0, 1), (1, 2), (2, 3)]  # block s learns from l_s and l_{s+1}
    height = {s: max(b.get_ydata()) for s, b in brackets.items()}
    for s in range(1, 4):  # neighbours share a block, so they must not share a row
        assert height[s] != height[s - 1]


def test_greedy_brackets_share_one_row():
    _, ax = plot_plan(Plan.greedy(4))
    assert len({max(b.get_ydata()) for b in tagged(ax, "bracket").values()}) == 1


def test_diagram_draws_on_a_given_axes():
    fig, ax = plt.subplots()
    assert plot_plan(Plan.greedy(3), ax=ax) == (fig, ax)


def test_diagram_bad_input_raises_clear_errors():
    with pytest.raises(TypeError, match="plot_plan: plan must be a minilocal.Plan, got tuple"):
        plot_plan(((0, 1), (2,)))
    with pytest.raises(ValueError, match="plan has 40 blocks.*up to 32"):
        plot_plan(Plan.greedy(40))
    with pytest.raises(TypeError, match="ax must be a matplotlib Axes or None, got str"):
        plot_plan(Plan.greedy(3), ax="left")


# A hand-made history: 3 evaluations of a 2-stage plan.
HISTORY = {"step": [10, 20, 30],
           "train_loss": [[2.0, 2.1], [1.5, 1.4], [1.2, 1.0]],
           "test_loss": [[2.1, 2.2], [1.6, 1.5], [1.3, 1.1]],
           "test_acc": [[0.2, 0.1], [0.4, 0.5], [0.5, 0.7]]}


def test_history_draws_one_curve_per_stage_with_the_history_values():
    _, ax = plot_history(HISTORY, metric="test_loss")
    lines = ax.get_lines()
    assert len(lines) == 2
    for s, line in enumerate(lines):
        np.testing.assert_array_equal(line.get_xdata(), [10, 20, 30])
        np.testing.assert_array_equal(line.get_ydata(), [row[s] for row in HISTORY["test_loss"]])
    assert ax.get_ylabel() == "test loss"


def test_history_from_a_real_training_run():
    from minilocal.numpy_core import init_mlp, train

    plan = Plan.chunked(3, 3)
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(64, 8)), "y": rng.integers(0, 3, 64),
            "x_test": rng.normal(size=(32, 8)), "y_test": rng.integers(0, 3, 32)}
    history = train(init_mlp(plan, 8, 16, 3), plan, data, steps=6, batch_size=16, eval_every=3,
                    progress=False)
    _, ax = plot_history(history)
    assert len(ax.get_lines()) == plan.n_stages
    np.testing.assert_array_equal(ax.get_lines()[-1].get_ydata(), output_curve(history)[1])


def test_output_curve_and_final_metrics_read_the_last_stage():
    steps, acc = output_curve(HISTORY)
    np.testing.assert_array_equal(steps, [10, 20, 30])
    np.testing.assert_array_equal(acc, [0.1, 0.5, 0.7])
    assert final_metrics(HISTORY) == {"train_loss": 1.0, "test_loss": 1.1, "test_acc": 0.7}


def test_compare_draws_the_output_head_of_every_method():
    other = {**HISTORY, "test_acc": [[0.3, 0.3], [0.6, 0.6], [0.8, 0.9]]}
    _, ax = plot_compare({"greedy": HISTORY, "backprop": other})
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["greedy", "backprop"]
    np.testing.assert_array_equal(lines[0].get_ydata(), [0.1, 0.5, 0.7])
    np.testing.assert_array_equal(lines[1].get_ydata(), [0.3, 0.6, 0.9])


def test_history_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="metric must be one of .* got 'accuracy'"):
        plot_history(HISTORY, metric="accuracy")
    with pytest.raises(ValueError, match="must be a dict with 'step' and 'test_acc'"):
        plot_history({"step": [1]})
    with pytest.raises(ValueError, match="3 steps but 2 'test_acc' rows"):
        plot_history({**HISTORY, "test_acc": HISTORY["test_acc"][:2]})
    with pytest.raises(ValueError, match="one value per stage.*lengths \\[1, 2\\]"):
        plot_history({**HISTORY, "test_acc": [[0.1], [0.2, 0.3], [0.4, 0.5]]})
    with pytest.raises(ValueError, match="history is empty"):
        output_curve({"step": [], "test_acc": []})
    with pytest.raises(ValueError, match="non-empty dict"):
        plot_compare([HISTORY])


# --- the explorer and plan specs ------------------------------------------------------------


@pytest.mark.parametrize("spec, want", [
    ("chunks=2,overlap=1", {"chunks": 2, "overlap": 1}),
    (" Chunks = 3 ", {"chunks": 3, "overlap": 0}),
    ("overlap=2", {"chunks": 6, "overlap": 2}),
    ("backprop", {"chunks": 1, "overlap": 0}),
    ("greedy", {"chunks": 6, "overlap": 0}),
    ("overlapping", {"chunks": 6, "overlap": 1}),
])
def test_parse_spec_hand_worked(spec, want):
    assert parse_spec(spec, 6) == want


@pytest.mark.parametrize("spec, error, message", [
    ("chunks=7", ValueError, "chunks must be between 1 and n_blocks \\(6\\), got 7"),
    ("chunks=0", ValueError, "chunks must be between 1 and n_blocks"),
    ("overlap=6", ValueError, "overlap must be between 0 and n_blocks - 1 \\(5\\), got 6"),
    ("chunks=2,depth=1", ValueError, "unknown key 'depth'"),
    ("chunks=2,chunks=3", ValueError, "'chunks' is given twice"),
    ("chunks=two", ValueError, "chunks must be a whole number, got 'two'"),
    ("chunks2", ValueError, "'chunks2' is not key=value"),
    ("", ValueError, "spec is empty"),
    (2, TypeError, "spec must be a string"),
])
def test_parse_spec_bad_input_names_the_problem(spec, error, message):
    with pytest.raises(error, match=message):
        parse_spec(spec, 6)


def test_plans_from_specs_equal_the_plan_constructors():
    assert plan_from_spec("backprop", 4) == Plan.backprop(4)
    assert plan_from_spec("greedy", 4) == Plan.greedy(4)
    assert plan_from_spec("overlapping", 4) == Plan.overlapping(4)
    assert plan_from_spec("chunks=2", 5) == Plan.chunked(5, 2)
    assert plan_from_spec("chunks=2,overlap=1", 4) == Plan(((0, 1), (2, 3)), overlap=1)
    assert plan_from_spec("chunks=2,overlap=1", 4).name == "chunked(2), overlap 1"
    assert plan_from_spec("overlap=2", 4) == Plan.overlapping(4, overlap=2)


def test_plan_from_choice_uses_only_the_controls_each_method_reads():
    assert plan_from_choice("backprop", 4, n_chunks=3, overlap=2) == Plan.backprop(4)
    assert plan_from_choice("greedy", 4, n_chunks=3, overlap=2) == Plan.greedy(4)
    assert plan_from_choice("overlapping", 4, n_chunks=3, overlap=2) == Plan.overlapping(4, 2)
    assert plan_from_choice("chunked", 4, n_chunks=3, overlap=2) == Plan.chunked(4, 3)
    assert plan_from_choice("general", 4, n_chunks=2, overlap=1) == Plan(((0, 1), (2, 3)), 1)
    with pytest.raises(ValueError, match="method must be one of .* got 'local'"):
        plan_from_choice("local", 4)
    with pytest.raises(ValueError, match="n_blocks must be between 1 and 32, got 0"):
        plan_from_choice("greedy", 0)


def test_explorer_builds_headless_and_follows_its_controls(capsys):
    explorer = plan_explorer(4)
    controls, text, image = explorer.children
    method, chunks, overlap = controls.children

    def shows(plan):  # the text, the picture and .plan all follow the controls
        assert explorer.plan == plan
        assert text.value == f"<pre>{html.escape(plan.describe())}</pre>"
        assert bytes(image.value) == plan_png(explorer.plan)  # the title names the plan as chosen
        assert image.layout.width == f"{png_size(image.value)[0]}px"  # shown at its own width

    shows(Plan.overlapping(4))  # drawn at construction: the front end gets a picture at once
    method.value = "general"
    chunks.value = 2
    overlap.value = 2
    shows(Plan(((0, 1), (2, 3)), overlap=2))
    method.value = "greedy"
    shows(Plan.greedy(4))
    assert chunks.disabled and overlap.disabled
    assert capsys.readouterr().out == ""  # nothing printed: widget updates never add cell outputs
    with pytest.raises(ValueError, match="plan_explorer\\(n_blocks=99\\): n_blocks must be"):
        plan_explorer(99)


def test_explorer_draws_without_pyplot():
    before = plt.get_fignums()
    plan_explorer(6).children[0].children[0].value = "chunked"  # the first draw and a redraw
    assert plt.get_fignums() == before  # no pyplot figure: safe on the kernel's callback threads


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.name or "general")
def test_plan_png_is_figsize_times_dpi_pixels_and_matches_the_pyplot_diagram(plan):
    width, height = plan_figsize(plan)
    assert png_size(plan_png(plan, dpi=40)) == (round(40 * width), round(40 * height))
    fig, ax = offscreen_figure(plan_figsize(plan))
    plot_plan(plan, ax=ax)
    assert png_bytes(fig) == plan_png(plan)
    assert tuple(plot_plan(plan)[0].get_size_inches()) == plan_figsize(plan)


def test_png_size_refuses_bytes_that_are_not_png():
    with pytest.raises(ValueError, match="png_size: not PNG bytes"):
        png_size(b"GIF89a" + bytes(30))


# --- Gantt charts -------------------------------------------------------------------------
def bar_extents(ax, kind, stage):
    """(x0, x1) of every bar drawn for ``kind`` on ``stage``, left to right."""
    bars = [c for c in ax.collections if c.get_gid() == f"{kind}-{stage}"]
    assert len(bars) == 1, f"one bar set per stage and kind, got {len(bars)}"
    return sorted((p.vertices[:, 0].min(), p.vertices[:, 0].max()) for p in bars[0].get_paths())


def test_gantt_bars_sit_inside_their_events_with_a_gap_between_neighbours():
    gpipe = schedule_timeline([1, 1], [2, 2], 4, "gpipe")  # 4 forwards back to back on stage 0
    _, (ax,) = plot_timelines({"gpipe": gpipe})
    for kind in ("forward", "backward"):
        for stage in (0, 1):
            events = sorted((e.t_start, e.t_end) for e in gpipe if (e.kind, e.stage) == (kind, stage))
            bars = bar_extents(ax, kind, stage)
            assert len(bars) == len(events) == 4
            for (t0, t1), (x0, x1) in zip(events, bars):
                assert t0 < x0 < x1 < t1  # narrower than its slot, at both ends
            for (_, right), (left, _) in zip(bars, bars[1:]):
                assert left - right > 0.005  # touching events stay two bars


def test_gantt_short_events_keep_most_of_their_width():
    tl = [Event(0, "forward", 0.0, 100.0, 0), Event(0, "send", 100.0, 100.01, 0)]
    _, (ax,) = plot_timelines({"run": tl})
    (x0, x1), = bar_extents(ax, "send", 0)
    assert 0.7 * 0.01 <= x1 - x0 < 0.01


def test_gantt_legend_names_exactly_the_kinds_drawn():
    gpipe = schedule_timeline([1, 1], [2, 2], 2, "gpipe")  # update=None: 0 s updates, no bar
    assert any(e.kind == "update" and e.t_end == e.t_start for e in gpipe)
    fig, _ = plot_timelines({"gpipe": gpipe})
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["forward", "backward", "idle"]
    with_update = schedule_timeline([1, 1], [2, 2], 2, "1f1b", update=[0.5, 0.5])
    fig, _ = plot_timelines({"gpipe": gpipe, "1f1b": with_update})
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["forward", "backward", "update",
                                                                  "idle"]


# --- one home, one style ------------------------------------------------------------------------
def test_old_module_names_are_the_moved_modules():
    import importlib

    for old, new in [("plots", "viz.plots"), ("widgets", "viz.widgets"),
                     ("dashboard", "viz.dashboard"), ("checks", "teaching.checks"),
                     ("release", "teaching.release"), ("grade", "teaching.grade")]:
        assert importlib.import_module(f"minilocal.{old}") is importlib.import_module(f"minilocal.{new}")
    from minilocal.compute import pareto, similarity
    import minilocal.viz as viz

    assert pareto.plot_scaling is viz.plot_scaling and similarity.plot_similarity is viz.plot_similarity
    with pytest.raises(AttributeError, match="no_such_plot"):
        viz.no_such_plot


def test_every_plot_returns_its_figure_and_axes():
    import minilocal.viz as viz

    history = {"step": [1, 2], "train_loss": [[1.0, 0.9], [0.8, 0.7]], "test_acc": [[0.1, 0.2], [0.3, 0.4]]}
    rows = [dict(method="greedy", batch=8, lr=1e-3, steps=3, time=1.0, flops=1)]
    timeline = [Event(0, "forward", 0.0, 1.0, 0)]
    calls = {"plot_plan": lambda: viz.plot_plan(Plan.greedy(3)),
             "plot_history": lambda: viz.plot_history(history),
             "plot_compare": lambda: viz.plot_compare({"greedy": history}),
             "plot_scaling": lambda: viz.plot_scaling(rows, 0.5),
             "plot_similarity": lambda: viz.plot_similarity({"step": [0, 1], "cosine": [[1.0], [0.5]]}),
             "plot_timeline": lambda: viz.plot_timeline(timeline),
             "plot_timelines": lambda: viz.plot_timelines({"a": timeline}),
             "plot_utilization": lambda: viz.plot_utilization({"a": timeline})}
    for name, call in calls.items():
        fig, ax = call()
        assert isinstance(fig, matplotlib.figure.Figure), name
        axes = np.ravel(ax)
        assert len(axes) and all(a.figure is fig for a in axes), name


def test_methods_keep_their_colour_in_every_figure():
    from minilocal.viz.style import method_color

    named = ["backprop", "greedy", "overlapping", "chunked(2)", "gpipe", "1f1b"]
    assert len({method_color(m) for m in named}) == len(named)
    assert method_color("chunked(3)") == method_color("chunked(2)")
    other = method_color("my method")
    assert other not in {method_color(m) for m in named} and method_color("my method") == other
    fig, ax = plot_compare({"overlapping": {"step": [1], "test_acc": [[0.5]]},
                            "greedy": {"step": [1], "test_acc": [[0.4]]}})
    assert [matplotlib.colors.to_hex(line.get_color()) for line in ax.lines] == \
        [method_color("overlapping"), method_color("greedy")]
