"""CUDA: LocalNet and fit on a GPU equal the CPU; stages on mixed devices pass both messages."""
import copy

import pytest
import torch
from torch import nn

from minilocal import LocalNet, Plan, models
from minilocal.train import fit

pytestmark = pytest.mark.gpu

PLANS = [Plan.greedy(3), Plan.overlapping(3), Plan.chunked(4, 2, overlap=1),
         Plan(((0,), (1,), (2,), (3, 4)), overlap=3)]


def sgd(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9)


def twins(plan, devices, optimizer=sgd):
    """Two float64 nets with the same weights: one on the CPU, one on ``devices``."""
    blocks, heads = models.mlp(plan, width=32, dtype=torch.float64)
    cpu = LocalNet(copy.deepcopy(blocks), copy.deepcopy(heads), plan, optimizer=optimizer)
    return cpu, LocalNet(blocks, heads, plan, optimizer=optimizer, devices=devices)


def batches(n_steps, n=64):
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(n, 40, generator=gen, dtype=torch.float64),
             torch.randint(0, 10, (n,), generator=gen)) for _ in range(n_steps)]


def assert_close_nets(a, b):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.detach().cpu(), q.detach().cpu(), rtol=1e-10, atol=1e-12,
                                   msg=name)


@pytest.mark.parametrize("plan", PLANS, ids=repr)
def test_cuda_trains_like_cpu(plan):
    cpu, gpu = twins(plan, "cuda")
    assert all(p.is_cuda for p in gpu.parameters())
    for x, y in batches(4):
        torch.testing.assert_close(gpu.train_step(x, y), cpu.train_step(x, y), rtol=1e-10, atol=0)
    assert_close_nets(cpu, gpu)
    x, _ = batches(1)[0]
    torch.testing.assert_close(gpu(x).cpu(), cpu(x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("plan, devices", [
    (Plan.overlapping(2), ["cuda:0", "cpu"]),
    (Plan.overlapping(3), ["cpu", "cuda:0", "cpu"]),
    (Plan(((0,), (1,), (2,), (3, 4)), overlap=3), ["cuda:0", "cpu", "cuda:0", "cpu"]),
], ids=["cuda-cpu", "cpu-cuda-cpu", "two-hops-alternating"])
def test_mixed_devices_move_activations_and_messages(plan, devices):
    cpu, mixed = twins(plan, devices)
    for stage, want in zip(mixed.stages, devices):
        assert {p.device.type for p in stage.parameters()} == {torch.device(want).type}
    for x, y in batches(3):
        torch.testing.assert_close(mixed.train_step(x, y), cpu.train_step(x, y), rtol=1e-10, atol=0)
    assert_close_nets(cpu, mixed)
    assert mixed.predict(batches(1)[0][0]).device.type == torch.device(devices[-1]).type


def test_to_devices_moves_optimizer_state_to_cuda():
    adam = lambda ps: torch.optim.Adam(ps, lr=1e-2)  # noqa: E731
    plan = Plan.overlapping(3)
    cpu, moved = twins(plan, "cpu", optimizer=adam)
    data = batches(4)
    for x, y in data[:2]:
        cpu.train_step(x, y)
        moved.train_step(x, y)
    moved.to_devices(["cuda", "cpu", "cuda"])
    for x, y in data[2:]:
        torch.testing.assert_close(moved.train_step(x, y), cpu.train_step(x, y), rtol=1e-10, atol=0)
    assert_close_nets(cpu, moved)
    state = moved.stages[0].optimizer.state[moved.stages[0].head.weight]
    assert state["exp_avg"].is_cuda


def test_bad_labels_on_cuda_raise_before_any_kernel_asserts():
    _, gpu = twins(Plan.greedy(2), "cuda")
    x, y = batches(1)[0]
    with pytest.raises(ValueError, match=r"stage 0: labels must lie in \[0, 9\]"):
        gpu.train_step(x, y + 10)
    gpu.train_step(x, y)  # the CUDA context is still healthy


def toy_data():
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 40, generator=gen) * 2

    def draw(n):
        y = torch.randint(0, 3, (n,), generator=gen)
        return centers[y] + torch.randn(n, 40, generator=gen), y

    (x, y), (x_test, y_test) = draw(256), draw(128)
    return {"x": x, "y": y, "x_test": x_test, "y_test": y_test}


class DropDense(nn.Module):
    """relu(linear(x)) then dropout, so the CUDA random stream matters to the result."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.linear, self.drop = nn.Linear(d_in, d_out), nn.Dropout(0.2)

    def forward(self, x):
        return self.drop(torch.relu(self.linear(x)))


def dropout_net(seed, plan):
    torch.manual_seed(seed)
    blocks = [DropDense(40 if b == 0 else 32, 32) for b in range(plan.n_blocks)]
    heads = [nn.Linear(32, 3) for _ in plan.stages]
    return LocalNet(blocks, heads, plan, optimizer=lambda ps: torch.optim.Adam(ps, lr=1e-2))


def test_fit_on_cuda_equals_cpu_and_learns():
    data = toy_data()
    plan = Plan.overlapping(3)
    cpu, gpu = twins(plan, "cpu")
    kwargs = dict(steps=30, batch_size=32, eval_every=10, lr_schedule="cosine", progress=False)
    want = fit(cpu, data, **kwargs)
    got = fit(gpu, data, device="cuda", **kwargs)
    assert all(s.device.type == "cuda" for s in gpu.stages)
    assert got["step"] == want["step"] == [10, 20, 30]
    for key in ("train_loss", "test_loss", "test_acc"):
        torch.testing.assert_close(torch.tensor(got[key]), torch.tensor(want[key]),
                                   rtol=1e-8, atol=1e-10)
    assert_close_nets(cpu, gpu)
    assert got["test_acc"][-1][-1] > 0.9


def test_fit_resume_on_cuda_is_bitwise(tmp_path):
    data, plan = toy_data(), Plan.greedy(3)
    kwargs = dict(steps=12, batch_size=32, eval_every=4, device="cuda", progress=False)
    whole = dropout_net(0, plan)
    want = fit(whole, data, **kwargs)

    path, calls = tmp_path / "run.pt", [0]
    broken = dropout_net(0, plan)

    def interrupt(module, args):
        calls[0] += module.training
        if calls[0] == 8:  # block 1 runs once per training step: this is step 8
            raise KeyboardInterrupt

    broken.blocks[1].register_forward_pre_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        fit(broken, data, checkpoint=path, checkpoint_every=5, **kwargs)
    assert torch.load(path, weights_only=True)["step"] == 5

    resumed = dropout_net(1, plan)
    got = fit(resumed, data, checkpoint=path, resume=True, **kwargs)
    assert got == want
    for (name, a), b in zip(whole.named_parameters(), resumed.parameters()):
        assert a.is_cuda and torch.equal(a, b), name


def test_module_to_cuda_moves_every_stage_and_its_optimizer_state():
    adam = lambda ps: torch.optim.Adam(ps, lr=1e-2)  # noqa: E731
    plan = Plan.overlapping(3)
    cpu, moved = twins(plan, "cpu", optimizer=adam)
    data = batches(4)
    for x, y in data[:2]:
        cpu.train_step(x, y)
        moved.train_step(x, y)
    moved.to("cuda")
    assert all(stage.device.type == "cuda" for stage in moved.stages)
    for x, y in data[2:]:
        torch.testing.assert_close(moved.train_step(x, y), cpu.train_step(x, y), rtol=1e-10, atol=0)
    assert_close_nets(cpu, moved)
    assert moved.stages[2].optimizer.state[moved.stages[2].head.weight]["exp_avg"].is_cuda
