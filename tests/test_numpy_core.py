"""NumPy core against oracles: finite differences, hand-worked scalar nets, torch.optim, MNIST-1D."""
import math

import numpy as np
import pytest
import torch

from minilocal import Plan
from minilocal.numpy_core import (SGD, Adam, init_mlp, local_grads, numerical_grad,
                                  plan_numerical_grads, rel_error, stage_losses, train)
from minilocal.numpy_core import layers as L

PLANS = [Plan.backprop(3), Plan.greedy(3), Plan.overlapping(3), Plan.chunked(4, 2),
         Plan(stages=((0, 1), (2,), (3, 4)), overlap=2)]


def small_problem(seed=0, b=6, d=5, c=3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(b, d)), rng.integers(0, c, b)


@pytest.mark.parametrize("fwd, bwd", [(L.relu_fwd, L.relu_bwd), (L.tanh_fwd, L.tanh_bwd)])
def test_activation_backward_matches_finite_differences(fwd, bwd):
    rng = np.random.default_rng(1)
    x, dout = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    dx, _ = bwd(dout, fwd(x)[1])
    assert rel_error(dx, numerical_grad(lambda: float((fwd(x)[0] * dout).sum()), x)) < 1e-8


def test_linear_and_cross_entropy_backward_match_finite_differences():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(4, 5)), rng.integers(0, 3, 4)
    p = {"weight": rng.normal(size=(3, 5)), "bias": rng.normal(size=3)}

    def loss():
        return L.softmax_cross_entropy_fwd(L.linear_fwd(x, p)[0], y)[0]

    logits, cache = L.linear_fwd(x, p)
    _, ce_cache = L.softmax_cross_entropy_fwd(logits, y)
    dx, g = L.linear_bwd(L.softmax_cross_entropy_bwd(1.0, ce_cache), cache)
    for got, value in [(dx, x), (g["weight"], p["weight"]), (g["bias"], p["bias"])]:
        assert rel_error(got, numerical_grad(loss, value)) < 1e-6


def test_cross_entropy_matches_torch():
    rng = np.random.default_rng(3)
    logits, y = rng.normal(size=(7, 4)) * 30, rng.integers(0, 4, 7)  # large logits: stability
    want = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(y)).item()
    assert abs(L.softmax_cross_entropy_fwd(logits, y)[0] - want) < 1e-12


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.name or "general")
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_local_grads_pass_the_finite_difference_check(plan, activation):
    x, y = small_problem()
    params = init_mlp(plan, d_in=5, width=4, n_classes=3, seed=1)
    grads, losses = local_grads(params, x, y, plan, activation)
    want = plan_numerical_grads(params, x, y, plan,
                                lambda p, xx, yy, pl: stage_losses(p, xx, yy, pl, activation))
    for name in params:
        assert rel_error(grads[name], want[name]) <= 1e-6, name
    assert np.allclose(losses, stage_losses(params, x, y, plan, activation))


def test_param_names_and_shapes_are_the_torch_state_dict():
    params = init_mlp(Plan.chunked(3, 2), d_in=40, width=16, n_classes=10)
    assert {k: v.shape for k, v in params.items()} == {
        "blocks.0.weight": (16, 40), "blocks.0.bias": (16,), "blocks.1.weight": (16, 16),
        "blocks.1.bias": (16,), "blocks.2.weight": (16, 16), "blocks.2.bias": (16,),
        "heads.0.weight": (10, 16), "heads.0.bias": (10,), "heads.1.weight": (10, 16),
        "heads.1.bias": (10,)}


def test_block_grad_is_sum_over_exactly_the_stages_that_train_it():
    """Oracle: full derivatives of each l_s by finite differences, summed by hand-listed stages."""
    plan = Plan.overlapping(4)
    x, y = small_problem(4)
    params = init_mlp(plan, d_in=5, width=3, n_classes=3, seed=2)
    grads, _ = local_grads(params, x, y, plan, "tanh")

    def d(s, name):
        return numerical_grad(lambda: stage_losses(params, x, y, plan, "tanh")[s], params[name])

    trains = {0: [0, 1], 1: [1, 2], 2: [2, 3], 3: [3]}   # block l <- losses l and l+1
    for l, stages in trains.items():
        for kind in ("weight", "bias"):
            name = f"blocks.{l}.{kind}"
            assert rel_error(grads[name], sum(d(s, name) for s in stages)) < 1e-6
    for s in range(4):  # a head gets only its own loss, although later losses do not depend on it
        assert rel_error(grads[f"heads.{s}.weight"], d(s, f"heads.{s}.weight")) < 1e-6
    # and block 0 really does influence l_3, which must not reach it
    assert np.abs(d(3, "blocks.0.weight")).max() > 1e-4


def test_equivalences_between_methods():
    x, y = small_problem(5)
    for a, b in [(Plan.chunked(4, 1), Plan.backprop(4)), (Plan.overlapping(4, 0), Plan.greedy(4))]:
        params = init_mlp(a, d_in=5, width=4, n_classes=3, seed=3)
        ga, la = local_grads(params, x, y, a)
        gb, lb = local_grads(params, x, y, b)
        assert la == lb and all(np.array_equal(ga[k], gb[k]) for k in ga)
    # greedy and backprop (same blocks, backprop's head = greedy's last head) differ on block 0
    params = init_mlp(Plan.greedy(3), d_in=5, width=4, n_classes=3, seed=3)
    bp_params = {k: v for k, v in params.items() if k.startswith("blocks.")}
    bp_params.update({"heads.0.weight": params["heads.2.weight"], "heads.0.bias": params["heads.2.bias"]})
    g_greedy, _ = local_grads(params, x, y, Plan.greedy(3))
    g_bp, _ = local_grads(bp_params, x, y, Plan.backprop(3))
    assert np.array_equal(g_greedy["heads.2.weight"], g_bp["heads.0.weight"])
    assert not np.allclose(g_greedy["blocks.0.weight"], g_bp["blocks.0.weight"])


@pytest.mark.parametrize("plan, peak", [(Plan.backprop(3), 1080), (Plan.greedy(3), 648),
                                        (Plan.overlapping(3), 864), (Plan.chunked(3, 2), 864)],
                         ids=lambda v: getattr(v, "name", str(v)))
def test_peak_cached_activation_bytes_by_hand(plan, peak):
    """B=6, D_in=5, H=4, C=3, float64. Block 0 keeps x (6x5x8=240 B) + relu mask (6x4x1=24 B) = 264;
    later blocks 192 + 24 = 216; the live head keeps 192 and the loss 144 + 48 (int64 labels) = 192.
    Greedy frees each block after its stage: max(264, 216) + 384. Backprop: all three + 384.
    Overlapping keeps block l-1 alive for l_l: 264 + 216 + 384. Chunked(3, 2): stage 0 = blocks 0-1."""
    x, y = small_problem()
    stats = {}
    local_grads(init_mlp(plan, d_in=5, width=4, n_classes=3), x, y, plan, stats=stats)
    assert stats["peak_cache_bytes"] == peak


# --- hand-worked scalar nets: 1 input, width 1, 2 classes, relu on positive values (= identity),
# head s gives logits (a_s * h, 0) and the label is class 1, so l_s = log(1 + exp(a_s h)) and
# d l_s / d h = a_s * sigmoid(a_s * h). SGD with lr = 1: w <- w - g.
W, A, X = [0.5, 2.0, 1.5, 0.8], [1.0, -0.5, 0.25, 0.7], 1.0


def sigmoid(z):
    return 1 / (1 + math.exp(-z))


def scalar_params(plan):
    params = {}
    for l in range(plan.n_blocks):
        params[f"blocks.{l}.weight"] = np.array([[W[l]]])
        params[f"blocks.{l}.bias"] = np.zeros(1)
    for s, stage in enumerate(plan.stages):
        a = A[stage[-1]]
        params[f"heads.{s}.weight"] = np.array([[a], [0.0]])
        params[f"heads.{s}.bias"] = np.zeros(2)
    return params


def hand_step(plan_name):
    """Expected block weights after one lr=1 step, written out with the chain rule."""
    h = [X]
    for w in W:
        h.append(w * h[-1])                   # h[l+1] = output of block l

    def dl_dh(l):                             # loss read after block l, w.r.t. that output
        return A[l] * sigmoid(A[l] * h[l + 1])

    if plan_name == "backprop":               # one loss after block 3 trains all
        g = [dl_dh(3) * math.prod(W[l + 1:]) * h[l] for l in range(4)]
    elif plan_name == "greedy":               # l_l trains block l only
        g = [dl_dh(l) * h[l] for l in range(4)]
    elif plan_name == "overlapping":          # block l: l_l plus l_{l+1} through block l+1
        g = [dl_dh(l) * h[l] + (dl_dh(l + 1) * W[l + 1] * h[l] if l < 3 else 0) for l in range(4)]
    else:                                     # chunked(2): l_1 trains blocks 0-1, l_3 blocks 2-3
        g = [dl_dh(1) * W[1] * h[0], dl_dh(1) * h[1], dl_dh(3) * W[3] * h[2], dl_dh(3) * h[3]]
    return [w - gl for w, gl in zip(W, g)]


@pytest.mark.parametrize("plan", [Plan.backprop(4), Plan.greedy(4), Plan.overlapping(4),
                                  Plan.chunked(4, 2)], ids=lambda p: p.name)
def test_hand_computed_scalar_step(plan):
    params = scalar_params(plan)
    grads, _ = local_grads(params, np.array([[X]]), np.array([1]), plan)
    SGD(params, lr=1.0).step(grads)
    got = [params[f"blocks.{l}.weight"][0, 0] for l in range(4)]
    assert np.allclose(got, hand_step(plan.name.split("(")[0]), rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_optimizers_match_torch_optim(name):
    rng = np.random.default_rng(6)
    p0, grads = rng.normal(size=(3, 4)), [rng.normal(size=(3, 4)) for _ in range(5)]
    params, tp = {"w": p0.copy()}, torch.tensor(p0, requires_grad=True)
    if name == "sgd":
        ours, theirs = SGD(params, lr=0.1, momentum=0.9), torch.optim.SGD([tp], lr=0.1, momentum=0.9)
    else:
        ours, theirs = Adam(params, lr=0.01), torch.optim.Adam([tp], lr=0.01)
    for g in grads:
        ours.step({"w": g})
        tp.grad = torch.tensor(g)
        theirs.step()
    assert np.allclose(params["w"], tp.detach().numpy(), rtol=1e-10, atol=1e-12)


@pytest.fixture(scope="module")
def data():
    from minilocal.data import mnist1d
    return mnist1d()


def test_backprop_mlp_reaches_60_percent_on_mnist1d(data):
    plan = Plan.backprop(3)
    params = init_mlp(plan, d_in=40, width=128, n_classes=10, seed=0, dtype=np.float32)
    history = train(params, plan, data, steps=1200, batch_size=128, lr=3e-3, eval_every=400,
                    progress=False)
    assert history["test_acc"][-1][0] >= 0.60


@pytest.mark.parametrize("plan", [Plan.greedy(3), Plan.overlapping(3), Plan.chunked(4, 2)],
                         ids=lambda p: p.name)
def test_every_local_method_trains(plan, data):
    params = init_mlp(plan, d_in=40, width=64, n_classes=10, seed=0, dtype=np.float32)
    history = train(params, plan, data, steps=300, batch_size=128, lr=3e-3, eval_every=100,
                    progress=False)
    first, last = history["train_loss"][0], history["train_loss"][-1]
    assert all(b < a for a, b in zip(first, last)), (first, last)
    assert history["test_acc"][-1][-1] > 0.3   # chance is 0.1


def test_train_rejects_bad_arguments(data):
    params = init_mlp(Plan.greedy(2), d_in=40, width=8)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        train(params, Plan.greedy(2), data, optimizer="rmsprop")
    with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
        train(params, Plan.greedy(2), data, steps=0)
    with pytest.raises(TypeError, match="plan must be a minilocal.Plan"):
        init_mlp("greedy")


def test_rel_error_hand_worked_and_one_measure_with_the_checks():
    from minilocal.teaching.checks import max_rel_error

    assert rel_error([1.0, 2.0], [1.0, 2.5]) == pytest.approx(0.5 / 4.5, rel=1e-15)
    assert rel_error([1e-10], [0.0]) == pytest.approx(1e-2, rel=1e-12)  # the 1e-8 floor
    assert rel_error(np.zeros((0, 3)), np.zeros((0, 3))) == 0.0
    assert np.isnan(rel_error([np.nan], [1.0]))
    with pytest.raises(ValueError, match=r"shapes \(2,\) and \(1,\)"):
        rel_error([1.0, 2.0], [1.0])
    r = np.random.default_rng(0)
    for a, b in [(r.normal(size=(3, 4)), r.normal(size=(3, 4))), (1e-9 * r.normal(size=5), np.zeros(5))]:
        assert rel_error(a, b) == max_rel_error(a, b)


STAGE_PLANS = [Plan.backprop(4), Plan.greedy(4), Plan.overlapping(4), Plan.chunked(4, 2),
               Plan.overlapping(4, overlap=2), Plan.chunked(6, 3, overlap=3), Plan([[0], [1, 2], [3]], 1)]


@pytest.mark.parametrize("plan", STAGE_PLANS, ids=lambda p: p.spec if hasattr(p, "spec") else str(p))
def test_stage_by_stage_equals_local_grads_bitwise(plan):
    from minilocal.numpy_core import run_stages
    rng = np.random.default_rng(1)
    params = init_mlp(plan, d_in=5, width=6, n_classes=3, seed=2)
    x, y = rng.normal(size=(7, 5)), rng.integers(0, 3, 7)
    want, want_losses = local_grads(params, x, y, plan)
    got, losses = run_stages(params, x, y, plan)
    assert losses == want_losses
    assert set(got) == set(want) and all(np.array_equal(got[k], want[k]) for k in want)


def test_stage_steps_without_their_backward_messages_miss_the_overlap():
    from minilocal.numpy_core import stage_step
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(7, 5)), rng.integers(0, 3, 7)
    for plan, should_match in ((Plan.greedy(3), True), (Plan.overlapping(3), False)):
        params = init_mlp(plan, d_in=5, width=6, n_classes=3, seed=2)
        want, _ = local_grads(params, x, y, plan)
        got, h = {}, x
        for s in range(plan.n_stages):  # a wrong runtime: messages never delivered
            step = stage_step(params, plan, s, h, y)
            got.update(step.grads)
            h = step.out
            assert (step.grad_in is None) == (plan.reach(s) == 0)
        same = all(np.array_equal(got[k], want[k]) for k in want)
        assert same == should_match


def test_stage_step_rejects_bad_stages():
    from minilocal.numpy_core import receive_grad, stage_step
    plan = Plan.greedy(2)
    params = init_mlp(plan, d_in=5, width=6, n_classes=3)
    with pytest.raises(ValueError, match=r"stages 0..1, got s=2"):
        stage_step(params, plan, 2, np.zeros((2, 5)), np.zeros(2, int))
    with pytest.raises(TypeError, match="plan must be a minilocal.Plan"):
        stage_step(params, "greedy", 0, np.zeros((2, 5)), np.zeros(2, int))
    with pytest.raises(ValueError, match="n_blocks must be >= 1"):
        receive_grad(plan, 0, [], np.zeros((2, 6)), 0)


def test_the_numpy_core_imports_without_torch():
    import subprocess
    import sys

    code = "import sys, minilocal.numpy_core, minilocal.batches; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "the NumPy lessons must start without importing torch"
