"""Runtime in one process: sequential and simulated runners against LocalNet and hand-worked
schedules, the pipeline schedule model, timelines and plots, the CLI. No process is started."""
import functools
import json
import re
import sys
import types

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from minilocal import Plan, models  # noqa: E402
from minilocal.__main__ import main  # noqa: E402
from minilocal.local import stage_step  # noqa: E402
from minilocal.runtime import (ArrayBatches, Event, Job, ModelSpec, RandomBatches,  # noqa: E402
                               adam, makespan, measure_costs, plot_timelines, plot_utilization,
                               run_distributed, run_pipeline, run_sequential, schedule_timeline,
                               rank_utilization, sgd, simulate, utilization)
from minilocal.runtime.distributed import Options  # noqa: E402
from minilocal.runtime.timeline import as_timeline, fill_idle, plot_timeline  # noqa: E402
from minilocal.train import evaluate  # noqa: E402

torch.set_num_threads(1)


def make_job(plan, n_steps=6, delay=0, batch=8):
    return Job(ModelSpec(models.mlp, {"width": 16, "d_in": 40}), plan,
               RandomBatches(batch, d_in=40), functools.partial(sgd, lr=0.2), n_steps, delay)


def assert_same_params(got, want):
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(torch.from_numpy(got[k]), torch.from_numpy(want[k])), k


# --- sequential ----------------------------------------------------------------------------
@pytest.mark.parametrize("plan", [Plan.overlapping(3), Plan.chunked(5, 2, overlap=1),
                                  Plan.greedy(2)])
def test_sequential_equals_localnet_train_step(plan):
    job = make_job(plan)
    run = run_sequential(job)
    net = job.build()
    losses = [net.train_step(*job.batches(t)) for t in range(job.n_steps)]
    assert run.history == {"step": list(range(1, job.n_steps + 1)), "train_loss": losses}
    assert_same_params(run.params, {k: v.numpy() for k, v in net.state_dict().items()})


def test_in_order_driver_names_stages_that_wait_forever():
    from minilocal.runtime.program import Recv, run_in_order

    def waits(s):
        yield Recv("act", 0)  # nobody sends it

    def done(s):
        return [1.0]
        yield

    with pytest.raises(RuntimeError, match=r"stages \[1\] wait for messages nobody sends"):
        run_in_order([done(0), waits(1)], 1, compute=None)


def test_sequential_timeline_has_every_stage_step():
    job = make_job(Plan.overlapping(3), n_steps=4)
    tl = run_sequential(job).timeline
    for kind, per_step in (("forward", 3), ("update", 3), ("backward", 3 + 2)):  # + 2 messages
        assert sum(e.kind == kind for e in tl) == per_step * job.n_steps
    assert all(e.t_end >= e.t_start >= 0 for e in tl)


# --- simulator: numerics -------------------------------------------------------------------
def test_simulator_with_zero_costs_equals_sequential_bitwise():
    job = make_job(Plan.overlapping(3))
    ref, sim = run_sequential(job), simulate(job, [0, 0, 0])
    assert sim.history == ref.history
    assert_same_params(sim.params, ref.params)


@pytest.mark.parametrize("plan", [Plan.greedy(3), Plan.chunked(4, 3), Plan.overlapping(3)])
def test_simulator_synchronous_under_any_timing_equals_sequential(plan):
    # jitter, a slow stage, a short queue and latency change the schedule, not the numbers
    job = make_job(plan)
    sim = simulate(job, [1.0, 3.0, 0.5], capacity=1, latency=0.2, jitter=0.5, seed=3)
    ref = run_sequential(job)
    assert sim.history == ref.history
    assert_same_params(sim.params, ref.params)


def test_simulator_delay_matches_hand_written_delayed_loop():
    job = make_job(Plan.overlapping(2), n_steps=5, delay=1)
    net = job.build()
    s0, s1 = net.stages
    messages, inputs, losses = [], [], []
    for t in range(job.n_steps):  # update t of stage 0 applies the message of step t - 1
        x, y = job.batches(t)
        inputs.append(x)
        r0 = stage_step(s0, x, y, update=False)
        r1 = stage_step(s1, r0.x_out, y, update=False)
        messages.append(r1.grad_in)
        if t >= 1:  # batch t - 1's input, through block 0 as it is now
            h = s0.blocks[0](inputs[t - 1])
            torch.autograd.backward(h, messages[t - 1], inputs=list(s0.blocks[0].parameters()))
        s0.update(), s1.update()
        losses.append([float(r0.loss), float(r1.loss)])
    sim = simulate(job, [1, 1], jitter=0.3)
    assert sim.history["train_loss"] == losses
    assert_same_params(sim.params, {k: v.numpy() for k, v in net.state_dict().items()})
    sync = run_sequential(job.replace(delay=0))
    assert sim.history["train_loss"][-1] != sync.history["train_loss"][-1]  # the delay matters


def test_jitter_per_stage_only_touches_that_stage():
    sim = simulate(make_job(Plan.greedy(3)), [3, 3, 3], jitter=[0, 0.5, 0])
    durations = {s: {e.t_end - e.t_start for e in sim.timeline if e.stage == s and
                     e.kind == "forward"} for s in range(3)}
    assert durations[0] == durations[2] == {1.0}
    assert len(durations[1]) == sim.history["step"][-1]


def test_simulator_is_deterministic_and_seeded():
    job = make_job(Plan.overlapping(3), delay=1)
    a, b = (simulate(job, [1, 2, 1], jitter=0.4, seed=7) for _ in range(2))
    assert a.timeline == b.timeline and a.history == b.history
    assert simulate(job, [1, 2, 1], jitter=0.4, seed=8).timeline != a.timeline


# --- simulator: time ----------------------------------------------------------------------
def test_simulated_makespan_matches_pipeline_formulas():
    n = 10
    job = make_job(Plan.greedy(3), n_steps=n)
    assert makespan(simulate(job, [1, 1, 1]).timeline) == pytest.approx(n + 2)   # fill + n steps
    assert makespan(simulate(job, [1, 1, 1], latency=0.5).timeline) == pytest.approx(n + 2 * 1.5)
    slow = simulate(job, [1, 3, 1])
    assert makespan(slow.timeline) == pytest.approx(1 + 3 * n + 1)              # the bottleneck
    assert utilization(slow.timeline) == pytest.approx([n / 32, 3 * n / 32, n / 32])


@pytest.mark.parametrize("capacity", [1, 3])
def test_staleness_equals_queue_capacity_behind_a_slow_stage(capacity):
    # stage 0 (cost 1) fills the queue to stage 1 (cost 3) and then blocks: stage 1 trains on
    # activations from weights exactly `capacity` updates older than stage 0's current ones
    n = 12
    sim = simulate(make_job(Plan.greedy(2), n_steps=n), [1, 3], capacity=capacity)
    staleness = sim.stats[1]["staleness"]
    assert staleness[0] == 0
    assert staleness[capacity:n - capacity] == [capacity] * (n - 2 * capacity)
    assert sim.stats[0]["staleness"] == [0] * n


def test_staleness_is_zero_when_the_next_stage_starts_before_the_update_ends():
    # a stage sends before it updates, so with a costly update the next stage starts on batch t
    # while update t still runs: the activation is as fresh as it can be (0, never negative)
    costs = {"forward": [1] * 3, "backward": [1] * 3, "update": [0.5] * 3, "message": [0] * 3}
    sim = simulate(make_job(Plan.greedy(3), n_steps=6), costs)
    assert [st["staleness"] for st in sim.stats] == [[0] * 6] * 3


def test_measure_costs_has_every_kind_per_stage():
    costs = measure_costs(make_job(Plan.overlapping(3)), n_steps=3)
    assert set(costs) == {"forward", "backward", "update", "message"}
    for kind in ("forward", "backward", "update"):
        assert all(c > 0 for c in costs[kind])
    assert costs["message"][0] > 0 and costs["message"][1] > 0 and costs["message"][2] == 0


# --- pipeline schedule model --------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_balanced_pipeline_bubble(schedule):
    K, M = 3, 4
    tl = schedule_timeline([1.0] * K, [2.0] * K, M, schedule)
    assert makespan(tl) == pytest.approx((M + K - 1) * 3)
    assert utilization(tl) == pytest.approx([M / (M + K - 1)] * K)


def test_unbalanced_pipeline_hand_worked():
    # f = (1, 2, 1), b = 2f, M = 2; worked out op by op in the module's dependency rules
    f, b = [1.0, 2.0, 1.0], [2.0, 4.0, 2.0]
    assert makespan(schedule_timeline(f, b, 2, "gpipe")) == pytest.approx(18)
    assert makespan(schedule_timeline(f, b, 2, "1f1b")) == pytest.approx(16)
    assert makespan(schedule_timeline(f, b, 2, "gpipe", n_steps=3, update=[1, 1, 1])) == \
        pytest.approx(3 * 19)


# --- timelines and plots ------------------------------------------------------------------
def test_utilization_and_fill_idle_hand_example():
    tl = [Event(0, "forward", 0, 1, 0), Event(0, "backward", 2, 4, 0), Event(1, "recv", 0, 1, 0),
          Event(1, "forward", 1, 2, 0)]
    assert utilization(tl) == pytest.approx([3 / 4, 1 / 4])
    idle = [e for e in fill_idle(tl) if e.kind == "idle"]
    assert idle == [Event(0, "idle", 1, 2, 0)]
    with pytest.raises(ValueError, match="kind"):
        as_timeline([(0, "think", 0, 1, 0)])


def test_plot_timelines_draws_one_bar_set_per_stage_and_kind():
    job = make_job(Plan.greedy(2), n_steps=3)
    runs = {"simulated": simulate(job, [1, 2]).timeline,
            "gpipe": schedule_timeline([1, 1], [2, 2], 2)}
    fig, axes = plot_timelines(runs)
    assert len(axes) == 2
    for ax, tl in zip(axes, runs.values()):
        want = {f"{e.kind}-{e.stage}" for e in tl}
        assert {c.get_gid() for c in ax.collections} == want
    _, ax = plot_utilization(runs)
    assert len(ax.patches) == 4
    plt.close("all")


def test_timeline_events_default_to_replica_0_and_old_tuples_still_load():
    e = Event(1, "forward", 0.5, 1.0, 3)
    assert e.replica == 0 and e == Event(1, "forward", 0.5, 1.0, 3, 0) and len(e) == 6
    assert as_timeline([(1, "forward", 0.5, 1.0, 3)]) == [e]               # JSON of older runs
    assert as_timeline([tuple(Event(0, "send", 0, 1, 0, 2))])[0].replica == 2  # a worker's tuple
    sim = simulate(make_job(Plan.greedy(3), n_steps=2), [1, 2, 1])
    assert {e.replica for e in sim.timeline} == {0}
    assert list(rank_utilization(sim.timeline).values()) == utilization(sim.timeline)


def test_timeline_utilization_per_rank_and_idle_per_row_hand_example():
    # 2 stages x 2 replicas; makespan 4 s
    tl = [Event(0, "forward", 0, 2, 0, 0), Event(0, "forward", 0, 1, 0, 1),
          Event(0, "reduce", 2, 3, 0, 1), Event(1, "recv", 0, 2, 0, 0),
          Event(1, "forward", 2, 4, 0, 0), Event(1, "backward", 3, 4, 0, 1)]
    assert rank_utilization(tl) == pytest.approx({(0, 0): 2 / 4, (0, 1): 1 / 4,
                                                  (1, 0): 2 / 4, (1, 1): 1 / 4})
    assert list(rank_utilization(tl)) == [(0, 0), (0, 1), (1, 0), (1, 1)]   # rank order
    assert utilization(tl) == pytest.approx([3 / 8, 3 / 8])                 # mean over replicas
    idle = sorted((e.stage, e.replica, e.t_start, e.t_end) for e in fill_idle(tl)
                  if e.kind == "idle")
    assert idle == [(0, 1, 1, 2), (1, 1, 0, 3)]  # each row's own gaps, not its stage's


def test_timeline_plots_one_row_per_stage_and_replica():
    tl = [Event(s, kind, s + 0.1 * r, s + 1, 0, r) for s in range(2) for r in range(3)
          for kind in ("forward", "reduce")]
    fig, ax = plot_timeline(tl)
    assert [t.get_text() for t in ax.get_yticklabels()] == \
        ["s0 r0", "s0 r1", "s0 r2", "s1 r0", "s1 r1", "s1 r2"]
    assert {c.get_gid() for c in ax.collections} == \
        {f"{k}-{s}-{r}" for s in range(2) for r in range(3) for k in ("forward", "reduce")}
    ys = {c.get_gid(): np.ptp(v := c.get_paths()[0].vertices[:, 1]) / 2 + v.min()
          for c in ax.collections}  # each bar's centre row
    assert ys["forward-1-2"] == pytest.approx(5) and ys["forward-0-1"] == pytest.approx(1)
    single = simulate(make_job(Plan.greedy(2), n_steps=2), [1, 1]).timeline
    fig, axes = plot_timelines({"K x D": tl, "K x 1": single})
    assert [len(ax.get_yticks()) for ax in axes] == [6, 2]
    assert [t.get_text() for t in axes[1].get_yticklabels()] == ["stage 0", "stage 1"]
    plt.close("all")


# --- input checks -------------------------------------------------------------------------
def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="one hop"):
        make_job(Plan.overlapping(3, overlap=2))
    with pytest.raises(ValueError, match="delay"):
        make_job(Plan.greedy(2), delay=-1)
    job = make_job(Plan.greedy(2))
    with pytest.raises(ValueError, match="capacity"):
        simulate(job, [1, 1], capacity=0)
    with pytest.raises(ValueError, match="2 finite seconds"):
        simulate(job, [1, 1, 1])
    with pytest.raises(ValueError, match="same number of stages"):
        run_distributed([job, make_job(Plan.greedy(3))])
    with pytest.raises(ValueError, match="window"):
        Options(window=0)
    with pytest.raises(ValueError, match="device must be 'auto' or 'cpu'"):
        Options("nccl", device="cpu")
    with pytest.raises(ValueError, match="n_microbatches"):
        run_pipeline(job, n_microbatches=3)
    with pytest.raises(ValueError, match="batch_size"):
        ArrayBatches(np.zeros((4, 2), np.float32), np.zeros(4, np.int64), batch_size=5)


def test_batch_sources_are_deterministic_and_array_epochs_are_permutations():
    src = RandomBatches(4, seed=1)
    assert torch.equal(src(3)[0], src(3)[0]) and not torch.equal(src(3)[0], src(4)[0])
    x = np.arange(10, dtype=np.float32)[:, None]
    arr = ArrayBatches(x, np.arange(10), batch_size=5, seed=0)
    epoch = torch.cat([arr(0)[1], arr(1)[1]])
    assert sorted(epoch.tolist()) == list(range(10))
    assert torch.equal(arr(2)[1], ArrayBatches(x, np.arange(10), 5, 0)(2)[1])


# --- command line -------------------------------------------------------------------------
def test_cli_trains_and_writes_json(tmp_path, capsys):
    out = tmp_path / "run.json"
    main(["train", "--runner", "simulator", "--plan", "overlapping", "--blocks", "3",
          "--steps", "4", "--data", "random", "--width", "8", "--batch-size", "8",
          "--out", str(out)])
    text = capsys.readouterr().out
    assert "4 steps" in text and "utilization" in text
    assert re.search(r"test accuracy of the output head: \d+\.\d% on 1000 held-out random", text)
    saved = json.loads(out.read_text())
    assert len(saved["history"]["train_loss"]) == 4 and len(saved["history"]["train_loss"][0]) == 3
    assert {e[1] for e in saved["timeline"]} >= {"forward", "backward", "update"}
    assert len(saved["test_acc"]) == 3 and all(0 <= a <= 1 for a in saved["test_acc"])
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # written atomically


def test_cli_test_accuracy_is_the_output_heads_on_held_out_data(capsys):
    main(["train", "--runner", "sequential", "--blocks", "2", "--steps", "3", "--data", "random",
          "--width", "8", "--batch-size", "8", "--seed", "1"])
    text = capsys.readouterr().out
    job = Job(ModelSpec(models.mlp, {"width": 8, "seed": 1}, 1), Plan.greedy(2),
              RandomBatches(8, seed=1), functools.partial(adam, lr=1e-3), 3)
    net = run_sequential(job).load_into(job.build())
    x, y = job.batches.held_out(1000)
    acc = evaluate(net, x, y)[1][-1]
    assert f"test accuracy of the output head: {acc:.1%} on 1000 held-out random" in text
    assert not any(torch.equal(x[:8], job.batches(t)[0]) for t in range(3))  # unseen examples


def test_cli_help_shows_every_default_and_explains_the_backend(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out.split("\nlaunchers:")[0]
    blocks = [" ".join(b.split()) for b in
              re.split(r"\n  (?=--)", text.split("show this help message and exit")[1])[1:]]
    assert len(blocks) == 19  # 18 options and --rank-order
    for block in blocks:
        assert "default" in block, block
    backend = next(b for b in blocks if b.startswith("--backend"))
    assert "NCCL" in backend and "gloo" in backend and "one GPU per process" in backend
    order = next(b for b in blocks if b.startswith("--rank-order"))
    assert all(w in order for w in ("replicas-together", "stages-together", "auto", "all-reduce"))


def test_cli_help_documents_torchrun_and_rejects_bad_plans(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "--nnodes" in out
    assert "rank = r*K + s" in out and "10144 B vs messages 1152 B" in out  # the order rule
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--plan", "chunked", "--chunks", "5", "--blocks", "3"])
    assert exit_.value.code == 2 and "chunks must be between 1 and n_blocks (3), got 5" in capsys.readouterr().err


def test_notebook_defined_recipes_are_refused_before_any_process_starts(monkeypatch):
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))  # as in Jupyter

    def my_model(plan):
        return models.mlp(plan)
    my_model.__module__ = "__main__"
    job = make_job(Plan.greedy(2)).replace(model=ModelSpec(my_model))
    with pytest.raises(ValueError, match=r"Job.model.fn \('my_model'\) is defined in this "):
        run_distributed(job)
    with pytest.raises(ValueError, match="defined in this notebook"):
        run_pipeline(job)


def test_sequential_runner_refuses_a_delayed_job():
    job = make_job(Plan.overlapping(2), delay=1)
    with pytest.raises(ValueError, match="the sequential runner is synchronous, but this job has delay=1"):
        run_sequential(job)
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--runner", "sequential", "--plan", "overlapping", "--delay", "1"])
    assert exit_.value.code == 2
    forward = measure_costs(job, n_steps=1)["forward"]  # costs of a delayed job are still measurable
    assert len(forward) == 2 and all(c > 0 for c in forward)


def test_simulate_names_the_costs_it_was_given():
    with pytest.raises(ValueError, match=r"costs must be 2 finite seconds >= 0 per step \(one per stage\), "
                                         r"got \[1, 1, 1, 1\]"):
        simulate(make_job(Plan.greedy(2)), [1, 1, 1, 1])


def test_results_carry_batchnorm_statistics_and_load_back_exactly():
    job = Job(ModelSpec(models.resnet1d, {"n_blocks": 2, "channels": 4}), Plan.greedy(2),
              RandomBatches(8, d_in=40), functools.partial(sgd, lr=0.1), 3)
    run = run_sequential(job)
    net = job.build()
    assert set(run.params) == set(net.state_dict())            # buffers included
    run.load_into(net)
    for name, value in net.state_dict().items():
        assert torch.equal(value, torch.from_numpy(run.params[name])), name
    assert int(net.state_dict()["blocks.1.norm1.num_batches_tracked"]) == 3
    other = make_job(Plan.greedy(2)).build()
    with pytest.raises(ValueError, match="these weights do not fit this net"):
        run.load_into(other)


def test_a_job_over_large_arrays_passes_the_pickling_check():
    # arrays over 64 KiB pickle out of band (PickleBuffer): the check must not choke on them
    x = np.zeros((5000, 40), np.float32)  # 800 KB
    job = make_job(Plan.greedy(2)).replace(batches=ArrayBatches(x, np.zeros(5000, np.int64), batch_size=16))
    job.check_portable("run_distributed")
