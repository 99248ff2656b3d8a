"""The study's pieces: the delayed-overlap trainer against the simulator (bit for bit), the
gradient noise scale against its exact value from per-example gradients, the lr grid extension."""
import math

import numpy as np
import pytest
import torch

from minilocal import LocalNet, Plan, models
from minilocal.compute import study
from minilocal.runtime import Job, ModelSpec, RandomBatches, simulate


@pytest.mark.parametrize("plan, delay", [(Plan.overlapping(3), 1), (Plan.overlapping(4), 2),
                                         (Plan(((0, 1), (2,), (3,)), overlap=1), 1)])
def test_train_delayed_equals_the_simulator_bit_for_bit(plan, delay):
    job = Job(ModelSpec(models.mlp, {"width": 16}), plan, RandomBatches(batch_size=16), n_steps=7,
              delay=delay)
    reference = simulate(job, [1.0] * plan.n_stages)
    net = job.build()
    study.train_delayed(net, (job.batches(t) for t in range(job.n_steps)), delay)
    ours = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    assert all(np.array_equal(ours[k], reference.params[k]) for k in reference.params)


def test_train_delayed_refuses_delay_zero():
    net = LocalNet(*models.mlp(Plan.overlapping(2), width=8), Plan.overlapping(2))
    with pytest.raises(ValueError, match=r"delay must be an int >= 1, got 0; for delay 0 use net.train_step"):
        study.train_delayed(net, [], 0)


def test_noise_scale_matches_the_exact_value_from_per_example_gradients():
    torch.manual_seed(0)
    plan = Plan.backprop(2)
    net = LocalNet(*models.mlp(plan, d_in=6, width=8, n_classes=3, dtype=torch.float64), plan)
    x, y = torch.randn(64, 6, dtype=torch.float64), torch.randint(0, 3, (64,))
    grads = []
    for i in range(len(x)):  # exact: population covariance of the per-example gradients
        net.zero_grad(set_to_none=True)
        net.local_backward(x[i:i + 1], y[i:i + 1])
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    G = torch.stack(grads)
    exact = float(((G - G.mean(0)) ** 2).sum(1).mean() / G.mean(0).pow(2).sum())
    estimate = study.noise_scale(net, x, y, small=4, big=64, repeats=3000)
    assert estimate == pytest.approx(exact, rel=0.15), (estimate, exact)


def fake_runs(best_lr):
    """A run_cached whose steps-to-target are smallest at ``best_lr`` (log distance)."""
    seen = []

    def run_cached(c):
        seen.append(c["lr"])
        return {"reached": int(100 + 50 * abs(math.log10(c["lr"] / best_lr))), "loss": [1.0]}
    return run_cached, seen


def test_tune_extends_the_grid_until_the_best_is_interior():
    run_cached, seen = fake_runs(best_lr=0.05)
    best, records, interior = study.tune("greedy", 64, run_cached)
    assert seen == [1e-3, 3e-3, 1e-2, 0.03, 0.1] and best == 0.03 and interior
    run_cached, _ = fake_runs(best_lr=1e-3)
    best, records, interior = study.tune("greedy", 64, run_cached)
    assert best == 1e-3 and interior and min(records) < 1e-3


def test_tune_says_when_the_best_stays_at_the_edge():
    run_cached, seen = fake_runs(best_lr=10.0)
    best, records, interior = study.tune("greedy", 64, run_cached, max_extend=2)
    assert best == max(records) == 0.1 and not interior and len(seen) == 5


def test_next_lr_walks_the_1_3_10_grid():
    assert [study.next_lr(v, up=True) for v in (1e-3, 3e-3, 1e-2, 0.3)] == [3e-3, 1e-2, 3e-2, 1.0]
    assert [study.next_lr(v, up=False) for v in (1e-3, 3e-3, 1e-2)] == [3e-4, 1e-3, 3e-3]


def test_config_gives_overlapping_a_real_delay():
    assert study.config("overlapping", 64, 1e-3)["delay"] == 1
    assert study.config("greedy", 64, 1e-3)["delay"] == 0
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['widht'\]"):
        study.config("greedy", 64, 1e-3, widht=3)


def _record(method, batch, lr, seed, reached, work):
    return dict(config=dict(method=method, batch=batch, lr=lr, seed=seed), reached=reached,
                stage_flops=work, n_stages=len(work))


def test_speedups_at_equal_hardware_by_hand():
    runs = [_record("backprop", 8, 0.1, 0, 10, [10.0]), _record("backprop", 8, 0.3, 0, 5, [10.0]),
            _record("greedy", 8, 0.1, 0, 12, [4.0, 6.0]), _record("greedy", 8, 0.3, 0, None, [4.0, 6.0])]
    payload = dict(runs={str(i): r for i, r in enumerate(runs)},
                   summary=dict(tuning={"backprop/8": dict(lr=0.1), "greedy/8": dict(lr=0.1)}))
    best = study.tuned_runs(payload)
    assert best == {"backprop": {8: {0: runs[0]}}, "greedy": {8: {0: runs[2]}}}  # the tuned lr only
    ups = study.speedups(best, [1, 4], pipeline_work=[5.0, 5.0], throughput=1.0)
    # N = 4: backprop 4 replicas, 10 steps x 10 x ceil(8/4) = 200; greedy 2 stages x 2 replicas,
    # (12 + 1) steps x 6 x ceil(8/2) = 312; GPipe 2 stages x 2 replicas, b = 4 = M microbatches:
    # 10 steps x (4 + 1) x 5 x 1 = 250
    assert ups["backprop", 4] == [1.0]
    assert ups["greedy", 4] == [pytest.approx(200 / 312)]
    assert ups["backprop, GPipe", 4] == [pytest.approx(200 / 250)]
    assert ups["greedy", 1] == [None] and ups["backprop, GPipe", 1] == [None]  # 2 stages need 2 devices
    best["greedy"][8][0] = dict(runs[2], reached=None)
    assert study.speedups(best, [4], [5.0, 5.0], 1.0)["greedy", 4] == [None]  # never reached
