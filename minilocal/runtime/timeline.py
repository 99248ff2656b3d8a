"""Timelines: one format for every runner, a Gantt chart per stage and utilization.

A timeline is a list of ``Event(stage, kind, t_start, t_end, step)``, times in seconds from the
run's start. Kinds: compute (forward, backward, update), communication (send, recv: time spent
waiting on a message; reduce: averaging gradients over a stage's replicas) and idle (waiting on
nothing in particular, e.g. a pipeline bubble).
Plot functions draw on ``ax`` (a new figure when None) and return ``(fig, ax)``; callers end
with ``plt.show()``.
"""
from collections import namedtuple

from ..viz.style import KIND_COLORS

Event = namedtuple("Event", "stage kind t_start t_end step")

COMPUTE = ("forward", "backward", "update")
COMM = ("send", "recv", "reduce")
KINDS = COMPUTE + COMM + ("idle",)
COLORS = KIND_COLORS  # the course's colours (minilocal.viz.style)
GAP = 0.004  # of the makespan: the white gap that keeps consecutive bars (micro-batches) apart


def as_timeline(events):
    """Events from plain tuples (e.g. after pickling or JSON), checked and sorted by start."""
    out = []
    for e in events:
        e = Event(*e)
        if e.kind not in KINDS:
            raise ValueError(f"timeline: event kind must be one of {KINDS}, got {e.kind!r} in {e}")
        if e.t_end < e.t_start:
            raise ValueError(f"timeline: event ends before it starts: {e}")
        out.append(e)
    return sorted(out, key=lambda e: (e.t_start, e.stage))


def makespan(timeline):
    """Seconds from the start to the end of the last event."""
    return max((e.t_end for e in timeline), default=0.0)


def busy_time(timeline, n_stages=None, kinds=COMPUTE):
    """Seconds per stage spent in ``kinds`` (compute by default): a list of K floats."""
    n_stages = n_stages or 1 + max(e.stage for e in timeline)
    out = [0.0] * n_stages
    for e in timeline:
        if e.kind in kinds:
            out[e.stage] += e.t_end - e.t_start
    return out


def utilization(timeline, n_stages=None):
    """Per stage: compute time / makespan (1.0 = never waited). A list of K floats."""
    span = makespan(timeline)
    return [b / span if span else 0.0 for b in busy_time(timeline, n_stages)]


def _pyplot():
    import matplotlib.pyplot as plt  # on first plot only: every worker process imports this module

    return plt


def _bars(spans, span):
    """(start, width) bars shortened by a gap at both ends, so two events that touch stay two
    bars; the gap is ``GAP * span`` but at most 30% of a bar, so short events stay visible."""
    out = []
    for start, width in spans:
        cut = min(GAP * span, 0.3 * width) / 2
        out.append((start + cut, width - 2 * cut))
    return out


def plot_timeline(timeline, ax=None, title=None):
    """Gantt chart: one row per stage (stage 0 on top), one bar per event coloured by kind, a thin
    gap between consecutive bars."""
    timeline = as_timeline(timeline)
    if ax is None:
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(9, 0.5 + 0.45 * (1 + max(e.stage for e in timeline))))
    fig = ax.figure
    rows = {}
    for e in timeline:
        rows.setdefault((e.stage, e.kind), []).append((e.t_start, e.t_end - e.t_start))
    span = makespan(timeline)
    for (stage, kind), spans in sorted(rows.items()):
        ax.broken_barh(_bars(spans, span), (stage - 0.4, 0.8), facecolors=COLORS[kind],
                       gid=f"{kind}-{stage}")
    n_stages = 1 + max(e.stage for e in timeline)
    ax.set_yticks(range(n_stages), [f"stage {s}" for s in range(n_stages)])
    ax.set_ylim(n_stages - 0.5, -0.5)
    ax.set_xlim(0, span)
    ax.set_xlabel("time (s)")
    if title:
        ax.set_title(title, loc="left", fontsize=10)
    return fig, ax


def _legend(fig, timelines):
    from matplotlib.patches import Patch

    used = {e.kind for tl in timelines for e in tl if e.t_end > e.t_start}  # 0 s draws no bar
    handles = [Patch(color=COLORS[k], label=k) for k in KINDS if k in used]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), frameon=False)


def plot_timelines(timelines, share_x=True):
    """Several runs stacked (e.g. {"local": ..., "GPipe": ..., "1F1B": ...}), each with its
    utilization per stage in the title; returns (fig, axes)."""
    names = list(timelines)
    if not names:
        raise ValueError("plot_timelines: timelines is empty; give {name: timeline}")
    tls = [as_timeline(timelines[n]) for n in names]
    plt = _pyplot()
    heights = [1 + max(e.stage for e in tl) for tl in tls]
    fig, axes = plt.subplots(len(names), 1, sharex=share_x, squeeze=False,
                             figsize=(9, 0.8 + 0.45 * sum(heights) + 0.4 * len(names)),
                             gridspec_kw={"height_ratios": heights})
    axes = axes[:, 0]
    for ax, name, tl in zip(axes, names, tls):
        util = ", ".join(f"{u:.0%}" for u in utilization(tl))
        plot_timeline(tl, ax=ax, title=f"{name}: makespan {makespan(tl):.3g} s, utilization {util}")
    if share_x:
        axes[0].set_xlim(0, max(makespan(tl) for tl in tls))
    _legend(fig, tls)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    return fig, axes


def plot_utilization(timelines, ax=None):
    """Grouped bars: compute utilization of each stage, one group per run."""
    if ax is None:
        _, ax = _pyplot().subplots(figsize=(6, 3))
    names = list(timelines)
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        util = utilization(as_timeline(timelines[name]))
        ax.bar([s + i * width for s in range(len(util))], util, width, label=name)
    n_stages = max(1 + max(e.stage for e in as_timeline(timelines[n])) for n in names)
    ax.set_xticks([s + 0.4 - width / 2 for s in range(n_stages)],
                  [f"stage {s}" for s in range(n_stages)])
    ax.set_ylim(0, 1)
    ax.set_ylabel("utilization")
    ax.legend(frameon=False, fontsize=8)
    return ax.figure, ax


def fill_idle(timeline):
    """The timeline plus an "idle" event for every gap in each stage's row (from time 0)."""
    timeline = as_timeline(timeline)
    out, last = list(timeline), {}
    for e in timeline:
        start = last.get(e.stage, 0.0)
        if e.t_start > start:
            out.append(Event(e.stage, "idle", start, e.t_start, e.step))
        last[e.stage] = max(start, e.t_end)
    return sorted(out, key=lambda e: (e.t_start, e.stage))
