"""Compute efficiency: FLOP counts vs hand formulas, the cost model on hand cases and against the
FLOPs torch counts in a real LocalNet step, sweep caching/resume, Pareto envelope, gradient similarity."""
import json
import math

import matplotlib
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from minilocal import LocalNet, Plan
from minilocal.compute.cost import (describe_cost_model, idealized_time, stage_flops, step_flops,
                                    step_time)
from minilocal.compute.flops import Flops, count_flops, model_flops
from minilocal.compute.pareto import best_runs, frontier, lower_envelope, steps_to_target
from minilocal.compute.similarity import (cosine, gradient_similarity, plan_gradients,
                                          similarity_over_training)
from minilocal.viz import plot_loss_vs_time, plot_scaling, plot_similarity
from minilocal.compute.sweep import (config_key, output_loss, eval_schedule, make_plan, run_one, sample_batches,
                                     sweep, sweep_configs)

matplotlib.use("Agg")
torch.set_num_threads(1)


def chain(dims, n_classes, plan, seed=0, dtype=torch.float32):
    """Blocks Linear+ReLU over ``dims``; one Linear head per stage reading its last block."""
    torch.manual_seed(seed)
    blocks = [nn.Sequential(nn.Linear(a, b), nn.ReLU()).to(dtype) for a, b in zip(dims, dims[1:])]
    heads = [nn.Linear(dims[stage[-1] + 1], n_classes).to(dtype) for stage in plan.stages]
    return blocks, heads


# --- FLOPs --------------------------------------------------------------------------------------
def test_linear_flops_match_hand_formula():
    # forward 2*B*Din*Dout; weight grad and input grad the same again each (so backward = 2x)
    f, out = count_flops(nn.Linear(7, 3), torch.randn(5, 7))
    assert (f.forward, f.backward_w, f.backward_x, f.backward) == (2 * 7 * 3, 2 * 7 * 3, 2 * 7 * 3, 4 * 7 * 3)
    assert out.shape == (5, 3) and not out.requires_grad


def test_conv1d_flops_match_hand_formula():
    # per example: 2 * C_out * L_out * C_in * k / groups, for forward and each backward part
    conv = nn.Conv1d(4, 6, kernel_size=5, padding=2)
    f, out = count_flops(conv, torch.randn(3, 4, 20))
    assert out.shape == (3, 6, 20)
    assert (f.forward, f.backward_w, f.backward_x) == (2 * 6 * 20 * 4 * 5,) * 3
    strided = nn.Conv1d(4, 8, kernel_size=3, stride=2, groups=2)  # L_out = (20 - 3) // 2 + 1 = 9
    f, _ = count_flops(strided, torch.randn(2, 4, 20))
    assert f.forward == 2 * 8 * 9 * (4 // 2) * 3


class SelfAttention(nn.Module):
    """One head, q = k = v = x: (B, T, D); ``fused`` picks scaled_dot_product_attention."""

    def __init__(self, fused):
        super().__init__()
        self.fused = fused

    def forward(self, x):
        if self.fused:
            return torch.nn.functional.scaled_dot_product_attention(x, x, x)
        scores = (x @ x.transpose(1, 2)) / math.sqrt(x.shape[-1])   # (B, T, T)
        return scores.softmax(dim=-1) @ x                            # (B, T, D)


def test_fused_attention_on_cpu_counts_like_the_two_matmuls():
    # per example: Q K^T and P V, 2*T*T*D each; backward: four matmuls of the same size
    T, D = 6, 8
    fused, _ = count_flops(SelfAttention(True), torch.randn(2, T, D))
    explicit, _ = count_flops(SelfAttention(False), torch.randn(2, T, D))
    assert fused.forward == explicit.forward == 4 * T * T * D
    assert fused.backward_x == 8 * T * T * D


def test_count_flops_leaves_batchnorm_stats_alone():
    bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    count_flops(bn, torch.randn(6, 3))
    assert all(torch.equal(before[k], v) for k, v in bn.state_dict().items())


def test_model_flops_heads_read_the_end_of_their_stage():
    plan = Plan.chunked(3, 2)                                  # stages (0, 1), (2,)
    blocks, heads = chain([3, 5, 7, 9], 2, plan)
    bf, hf = model_flops(blocks, heads, plan, torch.randn(4, 3))
    assert [f.forward for f in bf] == [2 * 3 * 5, 2 * 5 * 7, 2 * 7 * 9]
    assert [f.forward for f in hf] == [2 * 7 * 2, 2 * 9 * 2]   # heads on blocks 1 and 2
    with pytest.raises(ValueError, match="2 stages"):
        model_flops(blocks, heads[:1], plan, torch.randn(4, 3))


# --- cost model ---------------------------------------------------------------------------------
def test_stage_flops_on_hand_cases():
    """4 Linear(8, 8) blocks (f = 2*8*8 = 128 each for F, Bw, Bx), Linear(8, 3) heads (48 each)."""
    f, head = 128, 3 * 48
    expect = {
        Plan.greedy(4): [2 * f + head] * 4,                          # F + Bw; input detached
        Plan.backprop(4): [4 * f + 4 * f + 3 * f + head],            # no Bx for block 0
        Plan.overlapping(4): [3 * f + head,                          # F, Bw, Bw for l1
                              4 * f + head, 4 * f + head,            # F, Bw, Bx (message), Bw for next
                              3 * f + head],                         # F, Bw, Bx
        Plan.chunked(4, 2): [5 * f + head] * 2,                      # 2F, 2Bw, Bx of its 2nd block
    }
    got = {}
    for plan, want in expect.items():
        blocks, heads = chain([8] * 5, 3, plan)
        got[plan.name] = stage_flops(plan, *model_flops(blocks, heads, plan, torch.randn(2, 8)))
        assert got[plan.name] == want, plan
    # greedy's busiest stage does less than 1/4 of backprop's work, even without heads: 2f vs 11f / 4
    assert max(got["greedy"]) - head < (got["backprop"][0] - head) / 4


def test_stage_flops_separates_each_term():
    # magnitudes 1, 10, 100 per block and 1e3, 1e4, 1e5 per head make every term visible
    blocks, heads = [Flops(1, 10, 100)] * 3, Flops(1e3, 1e4, 1e5)
    assert stage_flops(Plan.backprop(3), blocks, [heads]) == [3 + 30 + 200 + 111000]
    assert stage_flops(Plan.overlapping(3, 2), blocks, [heads] * 3) == [
        1 + 10 * 3 + 111000,          # block 0: F, Bw from l0, l1, l2 (l2 stops at 0: no Bx)
        1 + 10 * 2 + 100 * 2 + 111000,  # block 1: F, Bw and Bx for each of l1 and l2
        1 + 10 + 100 + 111000]        # block 2: F, Bw, Bx (message for l2)
    with pytest.raises(ValueError, match="3 blocks"):
        stage_flops(Plan.greedy(3), blocks[:2], [heads] * 3)


@pytest.mark.parametrize("plan", [Plan.backprop(4), Plan.greedy(4), Plan.overlapping(4),
                                  Plan.overlapping(4, 2), Plan.chunked(4, 2), Plan.chunked(5, 2),
                                  Plan.chunked(5, 3, overlap=2)], ids=repr)
def test_cost_model_matches_flops_counted_in_a_localnet_step(plan):
    # oracle: torch counts the FLOPs LocalNet really performs in one local_backward
    blocks, heads = chain([6] + [10] * plan.n_blocks, 4, plan)
    x, y = torch.randn(16, 6), torch.randint(0, 4, (16,))
    model = stage_flops(plan, *model_flops(blocks, heads, plan, x[:2]))
    net = LocalNet(blocks, heads, plan)
    with FlopCounterMode(display=False) as counter:
        net.local_backward(x, y)
    assert step_flops(model, 16) == counter.get_total_flops()


def test_step_time_fill_and_data_parallelism():
    greedy, backprop = [400.0] * 4, [1552.0]
    assert step_time(greedy, 64, throughput=1e3) == 0.4                     # ideal DP: B-independent
    assert step_time(backprop, 64, throughput=1e3) == 1.552
    assert step_time(greedy, 64, throughput=1e3, devices_per_stage=16) == 0.4 * 4
    assert step_time(greedy, 65, throughput=1e3, devices_per_stage=16) == pytest.approx(0.4 * 5)
    assert idealized_time(10, greedy, 64, throughput=1e3) == pytest.approx((10 + 3) * 0.4)
    assert idealized_time(10, backprop, 64, throughput=1e3) == pytest.approx(10 * 1.552)
    assert idealized_time(0, greedy, 64) == 0.0
    assert step_flops(greedy, 64) == 64 * 1600
    for call, name in ((lambda: step_time(greedy, 0), "batch"),
                       (lambda: step_time(greedy, 8, throughput=-1.0), "throughput"),
                       (lambda: step_time(greedy, 8, devices_per_stage=0), "devices_per_stage"),
                       (lambda: idealized_time(-1, greedy, 8), "steps")):
        with pytest.raises(ValueError, match=name):
            call()
    assert "max_s W_s" in describe_cost_model() and "(n + K - 1)" in describe_cost_model()


# --- sweeps -------------------------------------------------------------------------------------
def test_eval_schedule_and_batches():
    assert eval_schedule(10, 2.0) == [0, 1, 2, 4, 8, 10]
    with pytest.raises(ValueError, match="ratio"):
        eval_schedule(10, 1.0)
    a, b = sample_batches(10, 3, seed=1), sample_batches(10, 3, seed=1)
    first = [next(a) for _ in range(3)]                        # one epoch: 3 batches of 3
    assert all(torch.equal(u, next(b)) for u in first)
    assert len(set(torch.cat(first).tolist())) == 9            # no repeats within an epoch
    with pytest.raises(ValueError, match="batch"):
        next(sample_batches(4, 5, seed=0))


def test_make_plan_and_configs():
    assert make_plan("chunked2", 4) == Plan.chunked(4, 2)
    assert make_plan("overlapping", 4) == Plan.overlapping(4, 1)
    with pytest.raises(ValueError, match=r"'chunked\(C\)'"):
        make_plan("chunky", 4)
    configs = sweep_configs(["backprop", "greedy"], [8, 16], [1e-3, 1e-2], width=16)
    assert len(configs) == 8 and len({config_key(c) for c in configs}) == 8
    with pytest.raises(ValueError, match="widht"):
        sweep_configs(["backprop"], [8], [1e-3], widht=16)


def fake_run(calls, fail_at=None):
    def run(config):
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt
        calls.append(config_key(config))
        return {"config": config, "value": config["batch"] * config["lr"]}
    return run


def test_sweep_runs_only_what_is_missing(tmp_path):
    path = tmp_path / "cache.json"
    configs = sweep_configs(["backprop", "greedy"], [8, 16], [1e-3])
    calls = []
    first = sweep(configs, path, run=fake_run(calls), progress=False)
    assert len(calls) == 4 and list(first) == [config_key(c) for c in configs]
    calls.clear()
    assert sweep(configs, path, run=fake_run(calls), progress=False) == first and calls == []
    bigger = sweep_configs(["backprop", "greedy"], [8, 16], [1e-3, 1e-2])  # a new lr: 4 new runs
    sweep(bigger, path, run=fake_run(calls), progress=False)
    assert sorted(calls) == sorted(config_key(c) for c in bigger if c["lr"] == 1e-2)


def test_interrupted_sweep_resumes(tmp_path):
    path = tmp_path / "cache.json"
    configs = sweep_configs(["backprop", "greedy"], [8, 16], [1e-3])
    calls = []
    with pytest.raises(KeyboardInterrupt):
        sweep(configs, path, run=fake_run(calls, fail_at=2), progress=False)
    saved = json.loads(path.read_text())
    assert sorted(saved) == sorted(calls) and len(calls) == 2   # written after every run
    assert [p.name for p in tmp_path.iterdir()] == ["cache.json"]  # no temporary file left
    resumed = []
    results = sweep(configs, path, run=fake_run(resumed), progress=False)
    assert sorted(resumed) == sorted(set(map(config_key, configs)) - set(calls))
    assert all(results[k] == saved[k] for k in saved)


def test_run_one_tiny_mnist1d():
    config = sweep_configs(["greedy"], [32], [1e-2], width=16, max_steps=40, stop_loss=0.0)[0]
    record = run_one(config)
    assert record["steps"] == eval_schedule(40, config["eval_ratio"])
    assert record["loss"][-1] < record["loss"][0] and record["reached"] is None
    assert record["n_stages"] == 4 and len(record["stage_flops"]) == 4
    assert record == dict(run_one(config), wall_s=record["wall_s"])   # seeded: same curve again
    stop = run_one(dict(config, stop_loss=10.0))           # any loss is below 10: stops at step 1
    assert stop["reached"] == 1 and stop["steps"] == [0, 1]


# --- Pareto -------------------------------------------------------------------------------------
def test_lower_envelope_on_a_hand_table():
    a = ([0, 1, 2, 3], [2.0, 1.5, 1.0, 1.2])                  # running min: 2, 1.5, 1.0, 1.0
    b = ([0, 2, 4], [2.0, 0.9, 0.5])
    late = ([3.5], [0.7])
    assert lower_envelope([a, b, late]) == ([0, 1, 2, 3, 3.5, 4], [2.0, 1.5, 0.9, 0.9, 0.7, 0.5])
    assert lower_envelope([late]) == ([3.5], [0.7])


def record(method, batch, lr, steps, loss, work):
    return {"config": {"method": method, "batch": batch, "lr": lr}, "steps": steps, "loss": loss,
            "stage_flops": work}


def test_best_runs_and_frontier_on_a_hand_table():
    rows = [record("bp", 8, 1e-3, [0, 10, 40], [2.0, 0.8, 0.4], [100.0]),
            record("bp", 8, 1e-2, [0, 10, 20], [2.0, 0.6, 0.5], [100.0]),
            record("bp", 64, 1e-2, [0, 10], [2.0, 0.9], [100.0]),            # never reaches 0.5
            record("bp", 64, 1e-3, [0, 10], [2.0, 0.7], [100.0]),
            record("gr", 8, 1e-3, [0, 30], [2.0, 0.5], [20.0, 30.0])]
    results = {str(i): r for i, r in enumerate(rows)}
    assert steps_to_target(rows[0], 0.5) == 40 and steps_to_target(rows[2], 0.5) is None
    best = best_runs(results, 0.5)
    assert best["bp"][8] is rows[1] and best["bp"][64] is rows[3] and best["gr"][8] is rows[4]
    table = frontier(results, 0.5, throughput=10.0)
    assert table == [
        dict(method="bp", batch=8, lr=1e-2, steps=20, time=20 * 100 / 10, flops=20 * 8 * 100),
        dict(method="bp", batch=64, lr=1e-3, steps=None, time=None, flops=None),
        dict(method="gr", batch=8, lr=1e-3, steps=30, time=(30 + 1) * 30 / 10, flops=30 * 8 * 50)]
    fig, axes = plot_scaling(table, 0.5)
    assert [len(ax.lines) for ax in axes] == [2, 2] and list(fig.axes) == list(axes)
    fig, ax = plot_loss_vs_time(results, 0.5)
    assert fig.axes == [ax] and len(ax.lines) == 3 + 2 + 1  # best runs, one envelope per method, target
    with pytest.raises(ValueError, match="'flops'"):
        plot_loss_vs_time(results, 0.5, x="steps")


# --- gradient similarity ------------------------------------------------------------------------
def batch64(d_in=5, n=24, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d_in, generator=g, dtype=torch.float64),
            torch.randint(0, classes, (n,), generator=g))


@pytest.mark.parametrize("plan", [Plan.backprop(3), Plan.greedy(3), Plan.overlapping(3),
                                  Plan.overlapping(3, 2), Plan.chunked(3, 2)], ids=repr)
def test_plan_gradients_equal_localnet_grads(plan):
    # oracle: LocalNet.local_backward, which fills .grad through stage steps and messages
    blocks, heads = chain([5, 6, 6, 6], 3, plan, dtype=torch.float64)
    x, y = batch64()
    mine = plan_gradients(blocks, heads, plan, x, y)
    LocalNet(blocks, heads, plan).local_backward(x, y)
    for b, block in enumerate(blocks):
        assert torch.allclose(mine[b], torch.cat([p.grad.reshape(-1) for p in block.parameters()]),
                              rtol=1e-10, atol=1e-12)


def test_cosine_hand_values():
    assert cosine(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])) == pytest.approx(1 / math.sqrt(2))
    assert cosine(torch.tensor([1.0, -2.0]), torch.tensor([-2.0, 4.0])) == pytest.approx(-1.0)
    assert cosine(torch.zeros(3), torch.ones(3)) == 0.0


def test_similarity_oracles():
    x, y = batch64()
    blocks, heads = chain([5, 6, 6, 6, 6], 3, Plan.greedy(4), dtype=torch.float64)
    # a one-chunk plan is backprop: every block gets the true gradient
    assert gradient_similarity(blocks, heads[-1:], Plan.chunked(4, 1), x, y) == pytest.approx([1.0] * 4)
    # only the output loss trains greedy's last block, and the detached input does not change it
    greedy = gradient_similarity(blocks, heads, Plan.greedy(4), x, y)
    assert greedy[3] == pytest.approx(1.0, abs=1e-12) and max(greedy[:3]) < 0.99
    two = gradient_similarity(blocks, [heads[1], heads[3]], Plan.chunked(4, 2), x, y)
    assert two[2:] == pytest.approx([1.0, 1.0], abs=1e-12) and max(two[:2]) < 0.99
    # overlapping's block 0 (of 2) = greedy's gradient + the output loss's (= backprop's) gradient
    b2, h2 = chain([5, 6, 6], 3, Plan.greedy(2), dtype=torch.float64)
    over = plan_gradients(b2, h2, Plan.overlapping(2), x, y)[0]
    parts = (plan_gradients(b2, h2, Plan.greedy(2), x, y)[0]
             + plan_gradients(b2, h2[1:], Plan.backprop(2), x, y)[0])
    assert torch.allclose(over, parts, rtol=1e-12, atol=1e-14)


def test_similarity_over_training_does_not_disturb_training():
    plan = Plan.greedy(3)
    x, y = batch64(n=64)

    def net():
        blocks, heads = chain([5, 6, 6, 6], 3, plan, seed=1, dtype=torch.float64)
        return LocalNet(blocks, heads, plan, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))

    watched, plain = net(), net()
    history = similarity_over_training(watched, x, y, (x[:16], y[:16]), steps=6, every=3, batch=8)
    batches = sample_batches(64, 8, seed=0)
    for _ in range(6):
        idx = next(batches)
        plain.train_step(x[idx], y[idx])
    assert all(torch.equal(a, b) for a, b in zip(watched.parameters(), plain.parameters()))
    assert history["step"] == [0, 3, 6]
    assert [c[2] for c in history["cosine"]] == pytest.approx([1.0] * 3, abs=1e-12)
    fig, ax = plot_similarity(history)
    assert fig.axes == [ax] and len(ax.lines) == 3 + 1


def test_output_loss_evaluates_in_eval_mode_and_restores_the_mode():
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU())]
    net = LocalNet(blocks, [nn.Linear(4, 2)], Plan.backprop(1))
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    before = blocks[0][1].running_mean.clone()
    loss = output_loss(net, x, y)
    assert torch.equal(blocks[0][1].running_mean, before) and net.training
    net.eval()
    with torch.no_grad():
        assert loss == pytest.approx(float(torch.nn.functional.cross_entropy(net(x), y)))


def test_gradient_similarity_leaves_batchnorm_statistics_alone():
    torch.manual_seed(0)
    plan = Plan.greedy(2)
    blocks = [nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU()) for _ in range(2)]
    blocks[1][0] = nn.Linear(4, 4)
    heads = [nn.Linear(4, 2), nn.Linear(4, 2)]
    before = [b.clone() for m in blocks for b in m.buffers()]
    gradient_similarity(blocks, heads, plan, torch.randn(8, 3), torch.randint(0, 2, (8,)))
    assert all(torch.equal(a, b) for a, b in zip(before, [b for m in blocks for b in m.buffers()]))
