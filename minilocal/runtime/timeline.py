"""Timelines: one format for every runner, a Gantt chart per stage and utilization.

A timeline is a list of ``Event(stage, kind, t_start, t_end, step, replica)``, times in seconds
from the run's start; ``replica`` (default 0) tells a stage's data-parallel copies apart, so a
K × D run has one row per (stage, replica), K·D in all. Kinds: compute (forward, backward,
update), communication (send, recv: time spent waiting on a message; reduce: averaging gradients
over a stage's replicas) and idle (waiting on nothing in particular, e.g. a pipeline bubble).
Plot functions draw on ``ax`` (a new figure when None) and return ``(fig, ax)``; callers end
with ``plt.show()``.
"""
from collections import namedtuple

from ..viz.style import KIND_COLORS

Event = namedtuple("Event", "stage kind t_start t_end step replica", defaults=(0,))

COMPUTE = ("forward", "backward", "update")
COMM = ("send", "recv", "reduce")
KINDS = COMPUTE + COMM + ("idle",)
COLORS = KIND_COLORS  # the course's colours (minilocal.viz.style)
GAP = 0.004  # of the makespan: the white gap that keeps consecutive bars (micro-batches) apart


def as_timeline(events):
    """Events from plain tuples (e.g. after pickling or JSON; 5-tuples are replica 0), checked
    and sorted by start."""
    out = []
    for e in events:
        e = Event(*e)
        if e.kind not in KINDS:
            raise ValueError(f"timeline: event kind must be one of {KINDS}, got {e.kind!r} in {e}")
        if e.t_end < e.t_start:
            raise ValueError(f"timeline: event ends before it starts: {e}")
        out.append(e)
    return sorted(out, key=order)


def order(e):
    """The sort key of a timeline: by start, then stage, then replica."""
    return e.t_start, e.stage, e.replica


def rows(timeline):
    """The (stage, replica) pairs that have events, in rank order (stage-major)."""
    return sorted({(e.stage, e.replica) for e in timeline})


def row_label(stage, replica, n_replicas):
    """A row's name on a chart: "stage 0" for one replica per stage, else "s0 r1"."""
    return f"stage {stage}" if n_replicas == 1 else f"s{stage} r{replica}"


def makespan(timeline):
    """Seconds from the start to the end of the last event."""
    return max((e.t_end for e in timeline), default=0.0)


def rank_busy_time(timeline, kinds=COMPUTE):
    """Seconds each (stage, replica) row spent in ``kinds``: {(stage, replica): float}, in rank
    order."""
    out = dict.fromkeys(rows(timeline), 0.0)
    for e in timeline:
        if e.kind in kinds:
            out[e.stage, e.replica] += e.t_end - e.t_start
    return out


def busy_time(timeline, n_stages=None, kinds=COMPUTE):
    """Seconds per stage spent in ``kinds`` (compute by default), averaged over the stage's
    replicas when it has several: a list of K floats."""
    n_stages = n_stages or 1 + max(e.stage for e in timeline)
    total, count = [0.0] * n_stages, [0] * n_stages
    for (s, _), b in rank_busy_time(timeline, kinds).items():
        total[s] += b
        count[s] += 1
    return [t / c if c else 0.0 for t, c in zip(total, count)]


def utilization(timeline, n_stages=None):
    """Per stage: compute time / makespan (1.0 = never waited), the mean over its replicas.
    A list of K floats."""
    span = makespan(timeline)
    return [b / span if span else 0.0 for b in busy_time(timeline, n_stages)]


def rank_utilization(timeline):
    """Per process: compute time / makespan of each (stage, replica) row, {(stage, replica):
    float} in rank order; with one replica per stage the values are ``utilization``'s."""
    span = makespan(timeline)
    return {row: b / span if span else 0.0 for row, b in rank_busy_time(timeline).items()}


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


def _n_rows(timeline):
    """Rows a chart of ``timeline`` has: every stage up to the last, times the replicas."""
    return (1 + max(e.stage for e in timeline)) * (1 + max(e.replica for e in timeline))


def plot_timeline(timeline, ax=None, title=None):
    """Gantt chart: one row per stage, or per (stage, replica) when a stage has replicas (stage 0
    replica 0 on top, rank order), one bar per event coloured by kind, a thin gap between
    consecutive bars. Bars carry the gid "kind-stage" ("kind-stage-replica" with replicas)."""
    timeline = as_timeline(timeline)
    if ax is None:
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(9, 0.5 + 0.45 * _n_rows(timeline)))
    fig = ax.figure
    n_stages, D = 1 + max(e.stage for e in timeline), 1 + max(e.replica for e in timeline)
    bars = {}
    for e in timeline:
        bars.setdefault((e.stage, e.replica, e.kind), []).append((e.t_start, e.t_end - e.t_start))
    span = makespan(timeline)
    for (stage, replica, kind), spans in sorted(bars.items()):
        y = stage * D + replica
        ax.broken_barh(_bars(spans, span), (y - 0.4, 0.8), facecolors=COLORS[kind],
                       gid=f"{kind}-{stage}" if D == 1 else f"{kind}-{stage}-{replica}")
    ax.set_yticks(range(n_stages * D),
                  [row_label(s, r, D) for s in range(n_stages) for r in range(D)])
    ax.set_ylim(n_stages * D - 0.5, -0.5)
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
    utilization per stage (the mean over a stage's replicas) in the title; returns (fig, axes)."""
    names = list(timelines)
    if not names:
        raise ValueError("plot_timelines: timelines is empty; give {name: timeline}")
    tls = [as_timeline(timelines[n]) for n in names]
    plt = _pyplot()
    heights = [_n_rows(tl) for tl in tls]
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
    """The timeline plus an "idle" event for every gap in each (stage, replica) row, from 0."""
    timeline = as_timeline(timeline)
    out, last = list(timeline), {}
    for e in timeline:
        row = e.stage, e.replica
        start = last.get(row, 0.0)
        if e.t_start > start:
            out.append(Event(e.stage, "idle", start, e.t_start, e.step, e.replica))
        last[row] = max(start, e.t_end)
    return sorted(out, key=order)
