"""LocalNet: equal to the NumPy core, to plain PyTorch, to hand-worked scalars; clear errors."""
import copy
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minilocal import LocalNet, Plan, models
from minilocal import numpy_core as npc
from minilocal.local import stage_step
from minilocal.models import Dense

torch.set_num_threads(1)

GENERAL = Plan(((0,), (1,), (2,), (3, 4)), overlap=3)  # stage 3's loss reaches two stages back
PLANS = [Plan.backprop(4), Plan.greedy(4), Plan.overlapping(4), Plan.overlapping(4, 2),
         Plan.chunked(5, 2), Plan.chunked(5, 3, overlap=1), GENERAL]


def mlp(plan, width=16, n_classes=10, dtype=torch.float32, seed=0):
    """The package's MLP (param names as NumPy's init_mlp), small."""
    return models.mlp(plan, d_in=40, width=width, n_classes=n_classes, seed=seed, dtype=dtype)


def sgd(lr=0.1, momentum=0.0):
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=momentum)


def batch(n=32, d_in=40, n_classes=10, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=gen, dtype=dtype), torch.randint(0, n_classes, (n,),
                                                                           generator=gen)


def numpy_twin(plan, optimizer=None, seed=0):
    """NumPy params from init_mlp, and a float64 LocalNet holding the same weights."""
    params = npc.init_mlp(plan, d_in=40, width=16, n_classes=10, seed=seed)
    net = LocalNet(*mlp(plan, dtype=torch.float64), plan, optimizer=optimizer or sgd())
    net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in params.items()}, strict=True)
    return params, net


def grads_of(net):
    return {k: p.grad.numpy() for k, p in net.named_parameters()}


def rel(a, b):
    """max |a - b| / max |b|: one scale per tensor, so entries that are tiny do not dominate."""
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


# --- proven equal: NumPy core -------------------------------------------------------------------
@pytest.mark.parametrize("plan", PLANS, ids=repr)
def test_gradients_and_losses_equal_numpy(plan):
    params, net = numpy_twin(plan)
    x, y = batch(dtype=torch.float64)
    want, want_losses = npc.local_grads(params, x.numpy(), y.numpy(), plan)
    losses = net.local_backward(x, y)
    got = grads_of(net)
    assert got.keys() == want.keys()
    for name in want:
        assert rel(got[name], want[name]) <= 1e-10, name
    np.testing.assert_allclose(losses, want_losses, rtol=1e-12)


@pytest.mark.parametrize("plan", [Plan.greedy(4), Plan.overlapping(4), GENERAL], ids=repr)
def test_sgd_steps_equal_numpy(plan):
    params, net = numpy_twin(plan, optimizer=sgd(lr=0.05, momentum=0.9))
    opt = npc.SGD(params, lr=0.05, momentum=0.9)
    for step in range(4):
        x, y = batch(dtype=torch.float64, seed=step)
        grads, want_losses = npc.local_grads(params, x.numpy(), y.numpy(), plan)
        opt.step(grads)
        np.testing.assert_allclose(net.train_step(x, y), want_losses, rtol=1e-12)
    for name, value in net.state_dict().items():
        assert rel(value.numpy(), params[name]) <= 1e-10, name


# --- proven equal: plain PyTorch, bitwise ---------------------------------------------------------
def adam(params):
    return torch.optim.Adam(params, lr=1e-2)


def assert_params_equal(a, b):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


def test_backprop_is_bitwise_nn_sequential():
    plan = Plan.backprop(4)
    blocks, heads = mlp(plan)
    model = nn.Sequential(*copy.deepcopy(blocks), copy.deepcopy(heads[0]))
    opt = adam(model.parameters())
    net = LocalNet(blocks, heads, plan, optimizer=adam)
    for step in range(5):
        x, y = batch(seed=step)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        assert net.train_step(x, y) == [loss.item()]
    assert_params_equal(net, model)
    assert not torch.equal(model[0].weight, mlp(plan)[0][0].weight)  # it did train


def test_greedy_is_bitwise_hand_written_detach_loop():
    plan = Plan.greedy(3)
    blocks, heads = mlp(plan)
    hand_blocks, hand_heads = copy.deepcopy(blocks), copy.deepcopy(heads)
    opts = [adam([*b.parameters(), *h.parameters()]) for b, h in zip(hand_blocks, hand_heads)]
    net = LocalNet(blocks, heads, plan, optimizer=adam)
    for step in range(5):
        x, y = batch(seed=step)
        h, want = x, []
        for block, head, opt in zip(hand_blocks, hand_heads, opts):
            h = block(h.detach())
            loss = F.cross_entropy(head(h), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            want.append(loss.item())
        assert net.train_step(x, y) == want
    assert_params_equal(net, nn.Sequential(*hand_blocks, *hand_heads))


@pytest.mark.parametrize("plan, same", [(Plan.chunked(4, 1), Plan.backprop(4)),
                                        (Plan.overlapping(4, 0), Plan.greedy(4))], ids=repr)
def test_equivalent_plans_train_bitwise_alike(plan, same):
    nets = [LocalNet(*mlp(p), p, optimizer=adam) for p in (plan, same)]
    for step in range(4):
        x, y = batch(seed=step)
        assert nets[0].train_step(x, y) == nets[1].train_step(x, y)
    assert_params_equal(*nets)


def recompute_grads(blocks, heads, plan, x, y):
    """Oracle for any blocks: each loss recomputed from the detached input of its first block."""
    inputs = [x]
    for block in blocks:
        inputs.append(block(inputs[-1]).detach())
    grads = {}
    for s in range(plan.n_stages):
        trained = plan.trained_by(s)
        h = inputs[trained[0]]
        for b in trained:
            h = blocks[b](h)
        named = [(f"blocks.{b}.{n}", p) for b in trained for n, p in blocks[b].named_parameters()]
        named += [(f"heads.{s}.{n}", p) for n, p in heads[s].named_parameters()]
        g = torch.autograd.grad(F.cross_entropy(heads[s](h), y), [p for _, p in named])
        for (name, _), value in zip(named, g):
            grads[name] = grads.get(name, 0) + value
    return grads


class ConvBlock(nn.Module):
    """x: (B, C, T) -> (B, C, T): conv, norm, gelu, a residual."""

    def __init__(self, c):
        super().__init__()
        self.conv, self.norm = nn.Conv1d(c, c, 3, padding=1), nn.GroupNorm(2, c)

    def forward(self, x):
        return x + F.gelu(self.norm(self.conv(x)))


class PoolHead(nn.Sequential):
    def __init__(self, c, n_classes):
        super().__init__(nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(c, n_classes))


@pytest.mark.parametrize("plan", [Plan.overlapping(4, 2), GENERAL, Plan.chunked(5, 2, overlap=3)],
                         ids=repr)
def test_any_blocks_match_recomputed_losses(plan):
    torch.manual_seed(1)
    blocks = [ConvBlock(4).double() for _ in range(plan.n_blocks)]
    heads = [PoolHead(4, 5).double() for _ in range(plan.n_stages)]
    x, y = torch.randn(6, 4, 12, dtype=torch.float64), torch.randint(0, 5, (6,))
    want = recompute_grads(blocks, heads, plan, x, y)
    net = LocalNet(blocks, heads, plan, optimizer=sgd())
    net.local_backward(x, y)
    got = {k: p.grad for k, p in net.named_parameters()}
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-12, atol=1e-14)


# --- hand-worked scalar nets, lr = 1 ----------------------------------------------------------
class Scale(nn.Module):
    """h = w * x with one scalar weight."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(float(w), dtype=torch.float64))

    def forward(self, x):
        return self.w * x


def half_squared_error(pred, target):
    return 0.5 * ((pred - target) ** 2).mean()


def scalar_net(plan):
    blocks = [Scale(2.0), Scale(3.0), Scale(0.5)]
    heads = [Scale(1.0) for _ in range(plan.n_stages)]
    return LocalNet(blocks, heads, plan, optimizer=sgd(lr=1.0), loss_fn=half_squared_error)


def weights(net):
    return [p.item() for p in net.parameters()]  # blocks w0, w1, w2, then heads v0, v1, ...


# x = 1, target 1, every head v = 1. Forward: h0 = 2, h1 = 6, h2 = 3; residuals r = h - 1 = 1, 5, 2.
# l_s = r_s^2 / 2 = 0.5, 12.5, 2.  d l_s / d v_s = r_s h_s = 2, 30, 6.
# Own block: d l0/d w0 = r0 v0 x = 1; d l1/d w1 = r1 v1 h0 = 10; d l2/d w2 = r2 v2 h1 = 12.
# One block back (overlap): d l1/d w0 = r1 v1 w1 x = 15; d l2/d w1 = r2 v2 w2 h0 = 2.
# Backprop, one head on h2: d/d w2 = 12, d/d w1 = r2 w2 h0 = 2, d/d w0 = r2 w2 w1 x = 3, d/d v = 6.
@pytest.mark.parametrize("plan, losses, after", [
    (Plan.greedy(3), [0.5, 12.5, 2.0], [2 - 1, 3 - 10, 0.5 - 12, 1 - 2, 1 - 30, 1 - 6]),
    (Plan.overlapping(3), [0.5, 12.5, 2.0], [2 - 16, 3 - 12, 0.5 - 12, 1 - 2, 1 - 30, 1 - 6]),
    (Plan.backprop(3), [2.0], [2 - 3, 3 - 2, 0.5 - 12, 1 - 6]),
], ids=["greedy", "overlapping", "backprop"])
def test_hand_worked_scalar_net(plan, losses, after):
    net = scalar_net(plan)
    one = torch.ones(1, dtype=torch.float64)
    assert net.train_step(one, one) == losses
    assert weights(net) == after


# --- the rest of the contract -----------------------------------------------------------------
def test_each_stage_has_its_own_optimizer_over_exactly_its_parameters():
    plan = Plan.chunked(5, 2, overlap=1)
    net = LocalNet(*mlp(plan), plan, optimizer=torch.optim.RMSprop)
    for stage in net.stages:
        assert isinstance(stage.optimizer, torch.optim.RMSprop)
        owned = [id(p) for m in [*stage.blocks, stage.head] for p in m.parameters()]
        assert [id(p) for g in stage.optimizer.param_groups for p in g["params"]] == owned
    assert sum(len(list(s.parameters())) for s in net.stages) == len(list(net.parameters()))


def test_forward_and_predict_use_only_the_output_head():
    plan = Plan.greedy(3)
    blocks, heads = mlp(plan)
    net = LocalNet(blocks, heads, plan)
    x, _ = batch()
    want = heads[2](blocks[2](blocks[1](blocks[0](x))))
    net.heads[0].weight.data.fill_(float("nan"))  # a hidden head must not touch the output
    assert torch.equal(net(x), want)
    assert torch.equal(net.predict(x), want.argmax(-1))
    outs = net.stage_outputs(x)
    assert len(outs) == 3 and torch.equal(outs[2], want) and torch.isnan(outs[0]).all()


def _benchmark(name):
    path = Path(__file__).parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_greedy_keeps_one_stage_of_activations_overlap_two():
    peak_saved_bytes = _benchmark("activation_memory").peak_saved_bytes
    x, y = batch(n=64)

    def peak(plan):  # width = input size, so every stage of greedy looks like a one-block net
        net = LocalNet(*mlp(plan, width=40), plan)
        net.train_step(x, y)
        return peak_saved_bytes(lambda: net.train_step(x, y), list(net.parameters()))

    one_block = peak(Plan.backprop(1))
    assert peak(Plan.greedy(8)) == one_block
    assert peak(Plan.greedy(8)) <= 0.3 * peak(Plan.backprop(8))
    assert one_block < peak(Plan.overlapping(8)) <= 2 * one_block  # stage s-1's graph waits for l_s


def test_to_devices_keeps_training_and_optimizer_state():
    plan = Plan.greedy(2)
    nets = [LocalNet(*mlp(plan), plan, optimizer=adam) for _ in range(2)]
    for step in range(3):
        x, y = batch(seed=step)
        if step == 1:
            nets[1].to_devices(["cpu", "cpu"])
        assert nets[0].train_step(x, y) == nets[1].train_step(x, y)
    assert_params_equal(*nets)


def test_module_to_a_device_that_replaces_parameters_is_refused():
    plan = Plan.overlapping(3)
    net = LocalNet(*mlp(plan), plan, optimizer=adam)
    with pytest.raises(RuntimeError, match=r"replaced stage 0's parameters .* build the LocalNet "
                                           r"with devices=\.\.\. instead"):
        net.to("meta")  # tensors without storage: torch makes new Parameter objects


def test_module_double_after_a_step_trains_like_a_float64_twin():
    plan = Plan.greedy(2)
    nets = [LocalNet(*mlp(plan), plan, optimizer=adam) for _ in range(2)]
    x, y = batch()
    for net in nets:
        net.train_step(x, y)
    nets[0].double()
    nets[1].to(torch.float64)
    for net in nets:  # Adam's moments follow the weights to float64: no dtype mix in the step
        state = net.stages[1].optimizer.state[net.stages[1].head.weight]
        assert state["exp_avg"].dtype == torch.float64
    assert nets[0].train_step(x.double(), y) == nets[1].train_step(x.double(), y)
    assert_params_equal(*nets)


class Tied(nn.Module):
    """A head whose weight is another module's tensor (the tied-embedding mistake)."""

    def __init__(self, weight):
        super().__init__()
        self.weight = weight

    def forward(self, h):
        return h @ self.weight.T


def test_a_parameter_shared_across_stages_is_refused():
    blocks, heads = mlp(Plan.greedy(2), width=10)
    heads[1] = Tied(blocks[1].weight)        # head 1 ties its own stage's block 1: allowed
    LocalNet(blocks, heads, Plan.greedy(2))
    heads[0] = Tied(blocks[1].weight)        # head 0 (stage 0) ties block 1 (stage 1): refused
    with pytest.raises(ValueError, match=r"block 1 \(weight\) of stage 1 and head 0 \(weight\) of "
                                         r"stage 0 share one tensor of shape \(10, 10\)"):
        LocalNet(blocks, heads, Plan.greedy(2))


def test_a_parameter_tied_inside_one_stage_is_optimized_once():
    blocks, _ = mlp(Plan.backprop(2), width=10)
    net = LocalNet(blocks, [Tied(blocks[1].weight)], Plan.backprop(2))
    params = net.stages[0].optimizer.param_groups[0]["params"]
    assert len(params) == len({id(p) for p in params}) == 4  # 2 weights + 2 biases, the tie once


# --- errors at the boundary ---------------------------------------------------------------------
def test_blocks_that_do_not_chain_name_the_stage_and_shape():
    plan = Plan.greedy(2)
    net = LocalNet([Dense(40, 16), Dense(32, 16)], [nn.Linear(16, 10), nn.Linear(16, 10)], plan)
    with pytest.raises(RuntimeError, match=r"stage 1, block 0 of the stage \(Dense\) failed on an "
                                           r"input of shape \(32, 16\)"):
        net.train_step(*batch())


def test_head_that_does_not_fit_names_the_head():
    plan = Plan.greedy(2)
    net = LocalNet([Dense(40, 16), Dense(16, 16)], [nn.Linear(16, 10), nn.Linear(8, 10)], plan)
    with pytest.raises(RuntimeError, match=r"stage 1: head 1 \(Linear\) failed on the stage's "
                                           r"output of shape \(32, 16\)"):
        net.train_step(*batch())


@pytest.mark.parametrize("n_blocks, n_heads, match", [
    (4, 3, r"the plan has 4 stages, so it needs 4 heads \(one per stage\), got 3"),
    (3, 4, r"the plan has 4 blocks but 3 blocks were given"),
])
def test_module_counts_must_match_the_plan(n_blocks, n_heads, match):
    blocks, heads = mlp(Plan.greedy(4))
    with pytest.raises(ValueError, match=match):
        LocalNet(blocks[:n_blocks], heads[:n_heads], Plan.greedy(4))


def test_modules_must_be_distinct_modules_and_plan_a_plan():
    blocks, heads = mlp(Plan.greedy(2))
    with pytest.raises(ValueError, match="block 1 is the same module object as block 0"):
        LocalNet([blocks[0], blocks[0]], heads, Plan.greedy(2))
    with pytest.raises(TypeError, match="block 1 must be an nn.Module, got function"):
        LocalNet([blocks[0], lambda x: x], heads, Plan.greedy(2))
    with pytest.raises(TypeError, match="plan must be a minilocal.Plan, got tuple"):
        LocalNet(blocks, heads, ((0,), (1,)))


def test_optimizer_must_be_a_factory_of_torch_optimizers():
    with pytest.raises(TypeError, match=r"optimizer must be a factory params -> torch.optim"):
        LocalNet(*mlp(Plan.greedy(2)), Plan.greedy(2), optimizer="adam")
    with pytest.raises(TypeError, match=r"optimizer\(params\) for stage 0 returned list"):
        LocalNet(*mlp(Plan.greedy(2)), Plan.greedy(2), optimizer=list)


def test_devices_one_per_stage_and_cuda_only_when_present(monkeypatch):
    with pytest.raises(ValueError, match=r"one device per stage \(3\), got 2: \['cpu', 'cpu'\]"):
        LocalNet(*mlp(Plan.greedy(3)), Plan.greedy(3), devices=["cpu", "cpu"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="device cuda:0 was asked for but CUDA is not available"):
        LocalNet(*mlp(Plan.greedy(2)), Plan.greedy(2), devices=["cpu", "cuda:0"])


def test_input_dtype_must_match_the_parameters():
    net = LocalNet(*mlp(Plan.greedy(2)), Plan.greedy(2))
    x, y = batch(dtype=torch.float64)
    with pytest.raises(TypeError, match="stage 0 expects float32 input, got float64"):
        net.train_step(x, y)
    with pytest.raises(TypeError, match="stage 0 expects float32 input, got float64"):
        net.predict(x)


def test_labels_must_be_integer_classes_in_range():
    net = LocalNet(*mlp(Plan.greedy(2), n_classes=3), Plan.greedy(2))
    x, y = batch(n_classes=3)
    with pytest.raises(ValueError, match=r"stage 0: labels must lie in \[0, 2\] for a head with 3 "
                                         r"outputs, got min 0, max 3"):
        net.train_step(x, torch.cat([y[:-1], torch.tensor([3])]))
    with pytest.raises(ValueError, match=r"got min -1"):
        net.train_step(x, torch.cat([y[:-1], torch.tensor([-1])]))
    with pytest.raises(TypeError, match="stage 0: labels must be integer class indices, got dtype "
                                        "float32"):
        net.train_step(x, y.float())
    with pytest.raises(ValueError, match="x has 32 examples but y has 31"):
        net.train_step(x, y[:-1])


@pytest.mark.parametrize("bad_stage", [0, 1, 2])
def test_non_finite_loss_stops_before_its_stage_updates(bad_stage):
    plan = Plan.greedy(3)
    net = LocalNet(*mlp(plan), plan, optimizer=sgd())
    x, y = batch()
    net.train_step(x, y)
    net.heads[bad_stage].bias.data[0] = float("inf")

    def snapshot():
        return [[p.clone() for p in stage.parameters()] for stage in net.stages]

    before = snapshot()
    with pytest.raises(FloatingPointError, match=f"stage {bad_stage}: local loss is nan at step 2"):
        net.train_step(x, y)
    for s, (old, new) in enumerate(zip(before, snapshot())):  # earlier stages may step, as in a
        assert all(map(torch.equal, old, new)) == (s >= bad_stage), s  # pipeline; this one may not
    before = snapshot()
    with pytest.raises(FloatingPointError, match=f"stage {bad_stage}: local loss is nan at step 3"):
        net.local_backward(x, y)
    assert all(all(map(torch.equal, old, new)) for old, new in zip(before, snapshot()))
    stage = net.stages[bad_stage]
    with pytest.raises(FloatingPointError, match=f"stage {bad_stage}: local loss is nan at step 4"):
        stage_step(stage, x if bad_stage == 0 else torch.zeros(32, 16), y)
    assert all(map(torch.equal, before[bad_stage], stage.parameters()))
    # the refused steps left no NaN gradient behind: once the input is sane, training goes on
    assert all(p.grad is None for st in net.stages for p in st.parameters())
    net.heads[bad_stage].bias.data[0] = 0.0
    net.train_step(x, y)
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_receive_stale_grad_recomputes_the_step_at_current_weights():
    """A delayed message: forward of the stored input through the stage as it is now, then the
    message backpropagated through the last n blocks only (oracle: autograd written out)."""
    from minilocal.local import receive_stale_grad

    torch.manual_seed(0)
    net = LocalNet([nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3)], [nn.Linear(3, 2), nn.Linear(3, 2)],
                   Plan(((0, 1), (2,)), overlap=1)).double()
    stage = net.stages[0]
    x, grad = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    receive_stale_grad(stage, grad, 1, x)               # only block 1 (Tanh: no parameters) ...
    assert all(p.grad is None for p in stage.blocks[0].parameters())
    receive_stale_grad(stage, grad, 2, x)               # ... now blocks 0 and 1
    w = stage.blocks[0].weight.detach().clone().requires_grad_(True)
    b = stage.blocks[0].bias.detach().clone().requires_grad_(True)
    (torch.tanh(x @ w.T + b) * grad).sum().backward()
    torch.testing.assert_close(stage.blocks[0].weight.grad, w.grad, rtol=1e-12, atol=0)
    torch.testing.assert_close(stage.blocks[0].bias.grad, b.grad, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="a delayed message can reach 1 to 2 blocks of this stage, got 3"):
        receive_stale_grad(stage, grad, 3, x)
    # the synchronous path too: l_1 reaches only the parameterless Tanh of stage 0
    net.zero_grad()
    net.local_backward(x, torch.tensor([0, 1, 0, 1]))
    only_l0 = torch.autograd.grad(
        F.cross_entropy(net.heads[0](torch.tanh(net.blocks[0](x))), torch.tensor([0, 1, 0, 1])),
        net.blocks[0].weight)[0]
    torch.testing.assert_close(net.blocks[0].weight.grad, only_l0, rtol=1e-12, atol=0)


def test_a_delayed_message_does_not_update_batchnorm_twice():
    from minilocal.local import receive_stale_grad

    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), nn.Linear(4, 4)]
    net = LocalNet(blocks, [nn.Linear(4, 2), nn.Linear(4, 2)], Plan.overlapping(2))
    bn = blocks[0][1]
    x = torch.randn(8, 3)
    stage_step(net.stages[0], x, torch.randint(0, 2, (8,)))
    seen = (bn.running_mean.clone(), int(bn.num_batches_tracked))
    receive_stale_grad(net.stages[0], torch.randn(8, 4), 1, x)
    assert torch.equal(bn.running_mean, seen[0]) and int(bn.num_batches_tracked) == seen[1] == 1
    assert blocks[0][0].weight.grad is not None


# --- fast=True: one optimizer step over all stages -------------------------------------------
def adam(params):
    return torch.optim.Adam(params, lr=1e-2)


@pytest.mark.parametrize("plan", PLANS, ids=repr)
@pytest.mark.parametrize("optimizer", [adam, sgd(momentum=0.9)], ids=["adam", "sgd"])
def test_fast_equals_the_per_stage_updates(plan, optimizer):
    """Oracle: the default path (bitwise the runners'). Fused kernels round differently, so
    float64 and a tolerance far below one step's change."""
    nets = [LocalNet(*mlp(plan, dtype=torch.float64), plan, optimizer=optimizer, fast=fast)
            for fast in (False, True)]
    assert nets[1].fast and nets[1].optimizers == [nets[1].optimizer]
    assert all(stage.optimizer is None for stage in nets[1].stages)
    for t in range(4):
        x, y = batch(dtype=torch.float64, seed=t)
        want, got = (net.train_step(x, y) for net in nets)
        assert got == pytest.approx(want, rel=1e-12)
    for (name, a), b in zip(nets[0].named_parameters(), nets[1].parameters()):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), name
        assert b.grad is None
    assert [s.step_count for s in nets[1].stages] == [4] * plan.n_stages


def test_fast_local_backward_then_step_equals_train_step():
    plan = Plan.overlapping(4)
    a, b = (LocalNet(*mlp(plan, dtype=torch.float64), plan, optimizer=adam, fast=True)
            for _ in range(2))
    x, y = batch(dtype=torch.float64)
    assert a.train_step(x, y) == b.local_backward(x, y)
    b.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_fast_stops_the_whole_step_on_a_non_finite_loss():
    plan = Plan.greedy(3)
    net = LocalNet(*mlp(plan), plan, optimizer=adam, fast=True)
    before = copy.deepcopy(net.state_dict())
    with torch.no_grad():
        net.heads[2].bias.fill_(float("nan"))
    before["heads.2.bias"] = net.heads[2].bias.clone()
    with pytest.raises(FloatingPointError, match="stage 2: local loss is nan"):
        net.train_step(*batch())
    for k, v in net.state_dict().items():  # no stage updated, no gradient left behind
        assert torch.equal(v, before[k]) or (v.isnan().all() and before[k].isnan().all()), k
    assert all(p.grad is None for p in net.parameters())


def test_fast_refuses_what_it_cannot_join():
    plan = Plan.greedy(2)
    kinds = iter([torch.optim.Adam, torch.optim.SGD])
    with pytest.raises(ValueError, match="same Adam / AdamW / SGD with the same settings"):
        LocalNet(*mlp(plan), plan, optimizer=lambda ps: next(kinds)(ps, lr=0.1), fast=True)
    with pytest.raises(ValueError, match=r"got RMSprop \(1 group\(s\)\), RMSprop"):
        LocalNet(*mlp(plan), plan, optimizer=torch.optim.RMSprop, fast=True)
    with pytest.raises(TypeError, match="fast must be True or False"):
        LocalNet(*mlp(plan), plan, fast="yes")
    net = LocalNet(*mlp(plan), plan, fast=True)
    with pytest.raises(RuntimeError, match="stage 0 has no optimizer of its own"):
        stage_step(net.stages[0], *batch())


def test_fast_optimizer_state_follows_a_conversion():
    plan = Plan.chunked(4, 2)
    a, b = (LocalNet(*mlp(plan), plan, optimizer=adam, fast=True) for _ in range(2))
    x, y = batch()
    a.train_step(x, y), b.train_step(x, y)
    b.double()
    assert all(s.dtype == torch.float64 for s in b.optimizer.state.values()
               for s in [s["exp_avg"]])
    a.double()
    xd = x.double()
    assert a.train_step(xd, y) == b.train_step(xd, y)


# --- a net without optimizers: evaluation and local_backward only ------------------------------
def test_a_net_without_optimizers_evaluates_and_backpropagates_like_one_with_them():
    plan = Plan.overlapping(3)
    with_opt, without = LocalNet(*mlp(plan), plan), LocalNet(*mlp(plan), plan, optimizer=None)
    assert with_opt.trainable and not without.trainable and without.optimizers == []
    x, y = torch.randn(16, 40, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 10
    assert all(torch.equal(a, b) for a, b in zip(with_opt.stage_outputs(x),
                                                 without.stage_outputs(x)))
    assert with_opt.local_backward(x, y) == without.local_backward(x, y)
    for a, b in zip(with_opt.parameters(), without.parameters()):
        assert torch.equal(a.grad, b.grad)
    without.to(torch.float64)  # a conversion needs no optimizer to follow it
    assert all(p.dtype == torch.float64 for p in without.parameters())
    for call in (lambda: without.train_step(x.double(), y), without.step):
        with pytest.raises(RuntimeError, match="built with optimizer=None, for evaluation and "
                                               "local_backward only"):
            call()
    with pytest.raises(ValueError, match="fast=True steps the stages' optimizers as one"):
        LocalNet(*mlp(plan), plan, optimizer=None, fast=True)


def test_a_net_without_optimizers_never_imports_torch_dynamo():
    import subprocess
    import sys

    code = ("import sys, torch; from minilocal import LocalNet, Plan, models; p = Plan.greedy(2); "
            "net = LocalNet(*models.mlp(p), p, optimizer=None); net.local_backward("
            "torch.randn(4, 40), torch.arange(4)); print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # the first optimizer is what imports it (~1 s)
