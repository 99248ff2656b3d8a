"""The live dashboard: window means worked by hand, silent headless runs, a live widget on demand."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from minilocal.viz import dashboard  # noqa: E402
from minilocal.viz.dashboard import Dashboard, frontend_present  # noqa: E402
from minilocal.viz.plots import png_size, stage_color  # noqa: E402

LOSSES = [[4.0, 2.0], [2.0, 1.0], [3.0, 3.0], [1.0, 0.0], [0.5, 0.25]]  # steps 1..5, K = 2


@pytest.fixture(autouse=True)
def headless(monkeypatch):
    """Every test starts with no front end and no override; figures are closed after it."""
    monkeypatch.delenv("MINILOCAL_LIVE", raising=False)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    yield
    plt.close("all")


def logged(every=2, **kwargs):
    dash = Dashboard(2, every=every, **kwargs)
    for step, losses in enumerate(LOSSES, 1):
        dash.log(step, losses)
    return dash


def test_points_are_window_means_worked_by_hand():
    dash = logged(every=2)
    # steps 1-2: mean(4, 2) = 3, mean(2, 1) = 1.5; steps 3-4: mean(3, 1) = 2, mean(3, 0) = 1.5
    assert dash.history == {"step": [2, 4], "train_loss": [[3.0, 1.5], [2.0, 1.5]]}


def test_show_closes_the_last_partial_window_and_prints_it(capsys):
    dash = logged(every=2)
    dash.show()
    assert dash.history["step"] == [2, 4, 5]
    assert dash.history["train_loss"][-1] == [0.5, 0.25]  # a window of one step: its own values
    assert capsys.readouterr().out == "step 5: l0 0.500  l1 0.250\n"


def test_show_draws_one_curve_per_stage_with_the_history_as_data(monkeypatch):
    shown = []
    monkeypatch.setattr(plt, "show", lambda: shown.append(plt.gcf()))
    dash = logged(every=2)
    dash.show()
    assert len(shown) == 1
    lines = shown[0].axes[0].get_lines()
    assert len(lines) == 2
    for s, line in enumerate(lines):
        np.testing.assert_array_equal(line.get_xdata(), [2, 4, 5])
        np.testing.assert_array_equal(line.get_ydata(), [row[s] for row in dash.history["train_loss"]])
        assert line.get_color() == stage_color(s)


def test_headless_logging_is_silent_and_builds_no_widget(capsys, monkeypatch):
    monkeypatch.setattr(Dashboard, "_redraw", lambda self, force=False: pytest.fail("drew headless"))
    dash = logged(every=1)
    assert dash.live is False and dash.widget is None
    assert capsys.readouterr().out == ""
    dash.show()
    assert capsys.readouterr().out == "step 5: l0 0.500  l1 0.250\n"


def test_headless_output_is_identical_between_runs(capsys):
    outputs = []
    for _ in range(2):
        logged(every=3).show()
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] == "step 5: l0 0.750  l1 0.125\n"  # steps 4-5: (1+.5)/2, (0+.25)/2


def test_losses_may_be_tensors_as_train_step_returns_them():
    dash = Dashboard(2, every=1)
    dash.log(1, [torch.tensor(0.25), torch.tensor(1.5, dtype=torch.float64)])
    assert dash.history["train_loss"] == [[0.25, 1.5]]


def test_live_widget_shows_a_png_of_the_curves_and_the_latest_numbers(capsys):
    dash = logged(every=2, live=True, min_interval=0)
    assert dash.widget is not None
    assert bytes(dash._image.value).startswith(b"\x89PNG")
    assert dash._status.value == "step 4: l0 2.000  l1 1.500"
    before = bytes(dash._image.value)
    dash.show()  # the widget gets the final point as well
    assert dash._status.value == "step 5: l0 0.500  l1 0.250"
    assert bytes(dash._image.value) != before


def test_live_png_is_displayed_at_its_own_pixel_size():
    dash = logged(every=2, live=True, min_interval=0)
    width, height = png_size(dash._image.value)
    assert (width, height) == (480, 272)  # FIGSIZE (6, 3.4) inches x LIVE_DPI 80
    layout = dash._image.layout  # the box would stretch the image to its width: a blurry PNG
    assert (layout.width, layout.height, layout.max_width) == (f"{width}px", "auto", "100%")


def test_live_redraws_are_throttled(monkeypatch):
    clock = iter([100.0, 100.1, 100.2, 101.0])
    monkeypatch.setattr(dashboard.time, "monotonic", lambda: next(clock))
    dash = Dashboard(1, every=1, live=True, min_interval=0.5)
    statuses = []
    for step in range(1, 5):
        dash.log(step, [float(step)])
        statuses.append(dash._status.value)
    # drawn at t=100.0 (first) and t=101.0 (0.8 s after it); t=100.1 and 100.2 are too soon
    assert statuses == ["step 1: l0 1.000"] * 3 + ["step 4: l0 4.000"]


def test_frontend_detection(monkeypatch):
    assert frontend_present() is False  # pytest: no kernel
    monkeypatch.setenv("JPY_SESSION_NAME", "course/07.ipynb")
    assert frontend_present() is False  # a session name without a kernel (e.g. a subprocess)
    monkeypatch.setattr(dashboard, "_kernel_shell", lambda: object())
    assert frontend_present() is True
    monkeypatch.delenv("JPY_SESSION_NAME")
    assert frontend_present() is False  # a kernel with no server: nbval, nbclient
    monkeypatch.setenv("MINILOCAL_LIVE", "1")
    assert frontend_present() is True
    monkeypatch.setenv("JPY_SESSION_NAME", "course/07.ipynb")
    monkeypatch.setenv("MINILOCAL_LIVE", "0")
    assert frontend_present() is False
    assert Dashboard(1).live is False


def test_bad_override_is_refused_with_the_fix(monkeypatch):
    monkeypatch.setenv("MINILOCAL_LIVE", "yes")
    with pytest.raises(ValueError, match="MINILOCAL_LIVE must be 0 .* or 1 .*got 'yes'"):
        frontend_present()


@pytest.mark.parametrize("kwargs, error, message", [
    ({"n_stages": 0}, ValueError, "n_stages must be an int >= 1, got 0"),
    ({"n_stages": 2.0}, TypeError, r"n_stages must be an int, got 2.0 \(float\)"),
    ({"n_stages": 2, "every": 0}, ValueError, "every must be an int >= 1, got 0"),
    ({"n_stages": 2, "min_interval": -1}, ValueError, "min_interval must be a number of seconds >= 0, got -1"),
    ({"n_stages": 2, "live": "auto"}, ValueError, "live must be None .*, got 'auto'"),
])
def test_bad_arguments_name_the_argument_and_the_value(kwargs, error, message):
    with pytest.raises(error, match=message):
        Dashboard(**kwargs)


def test_bad_logs_say_what_was_expected():
    dash = Dashboard(2)
    with pytest.raises(ValueError, match=r"expected 2 losses .* got 3: \[1.0, 2.0, 3.0\].*n_stages=3"):
        dash.log(1, [1, 2, 3])
    dash.log(1, [1, 2])
    with pytest.raises(ValueError, match="steps must increase, got step 1 after step 1"):
        dash.log(1, [1, 2])
    with pytest.raises(ValueError, match="step must be an int >= 1, got 0"):
        Dashboard(2).log(0, [1, 2])
    with pytest.raises(ValueError, match="nothing was logged"):
        Dashboard(2).show()
