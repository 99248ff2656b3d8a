"""fit: history format, batches, schedules, checkpoint/resume (bitwise), language-model data, errors."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minilocal import LocalNet, Plan
from minilocal.train import cosine, evaluate, fit

torch.set_num_threads(1)


class Dense(nn.Linear):
    """relu(linear(x)), with optional dropout so the model draws random numbers."""

    def __init__(self, d_in, d_out, p=0.0):
        super().__init__(d_in, d_out)
        self.drop = nn.Dropout(p)

    def forward(self, x):
        return self.drop(torch.relu(super().forward(x)))


def net_for(plan, seed=0, p=0.0, optimizer=None, n_classes=3):
    torch.manual_seed(seed)
    blocks = [Dense(40 if b == 0 else 16, 16, p) for b in range(plan.n_blocks)]
    heads = [nn.Linear(16, n_classes) for _ in range(plan.n_stages)]
    return LocalNet(blocks, heads, plan,
                    optimizer=optimizer or (lambda ps: torch.optim.Adam(ps, lr=1e-2)))


def test_history_format_matches_the_numpy_loop(toy_data):
    plan = Plan.overlapping(3)
    h = fit(net_for(plan), toy_data, steps=25, batch_size=32, eval_every=10, progress=False)
    assert list(h) == ["step", "train_loss", "test_loss", "test_acc"]
    assert h["step"] == [10, 20, 25]
    for key in ("train_loss", "test_loss", "test_acc"):
        assert len(h[key]) == 3 and all(len(row) == plan.n_stages for row in h[key])
        assert all(isinstance(v, float) for row in h[key] for v in row)


def test_it_learns_and_the_last_record_is_the_net_evaluated(toy_data):
    net = net_for(Plan.greedy(2))
    h = fit(net, toy_data, steps=40, batch_size=32, eval_every=40, progress=False)
    x, y = torch.from_numpy(toy_data["x_test"]), torch.from_numpy(toy_data["y_test"])
    outs = net.stage_outputs(x)
    assert h["test_loss"][-1] == pytest.approx([F.cross_entropy(o, y).item() for o in outs])
    assert h["test_acc"][-1] == pytest.approx([(o.argmax(1) == y).float().mean().item()
                                               for o in outs])
    assert h["test_acc"][-1][-1] > 0.9  # three well-separated clusters


def test_train_loss_is_the_mean_of_the_step_losses(toy_data):
    nets = [net_for(Plan.greedy(2)) for _ in range(2)]
    seen = []
    original = nets[1].train_step
    nets[1].train_step = lambda x, y: seen.append(original(x, y)) or seen[-1]
    h = fit(nets[1], toy_data, steps=6, batch_size=32, eval_every=3, progress=False)
    assert len(seen) == 6
    assert h["train_loss"] == [list(np.mean(seen[:3], axis=0)), list(np.mean(seen[3:], axis=0))]


def test_callback_sees_every_step_and_its_stage_losses(toy_data):
    net, seen, logged = net_for(Plan.greedy(2)), [], []
    original = net.train_step
    net.train_step = lambda x, y: seen.append(original(x, y)) or seen[-1]
    fit(net, toy_data, steps=5, batch_size=32, eval_every=5, progress=False,
        callback=lambda step, losses: logged.append((step, losses)))
    assert logged == list(zip(range(1, 6), seen))


def test_an_epoch_shows_every_example_once(toy_data):
    class Record(nn.Module):
        def __init__(self):
            super().__init__()
            self.seen, self.scale = [], nn.Parameter(torch.ones(()))

        def forward(self, x):
            if self.training:
                self.seen.append(x[:, 0].detach().clone())
            return x * self.scale

    record = Record()
    net = LocalNet([record], [nn.Linear(40, 3)], Plan.backprop(1))
    fit(net, toy_data, epochs=2, batch_size=48, eval_every=100, progress=False)
    first = np.sort(torch.cat(record.seen[:5]).numpy())
    second = torch.cat(record.seen[5:]).numpy()
    assert len(record.seen) == 10  # 240 // 48 steps per epoch
    np.testing.assert_array_equal(first, np.sort(toy_data["x"][:, 0]))
    np.testing.assert_array_equal(np.sort(second), first)
    assert not np.array_equal(second, torch.cat(record.seen[:5]).numpy())  # reshuffled


def test_same_seed_same_run_other_seed_other_run(toy_data):
    def run(seed):
        net = net_for(Plan.greedy(2), p=0.2)
        fit(net, toy_data, steps=8, batch_size=32, seed=seed, progress=False)
        return torch.cat([p.flatten() for p in net.parameters()])

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_schedule_scales_every_stage_lr(toy_data):
    sgd = lambda ps: torch.optim.SGD(ps, lr=0.2)  # noqa: E731
    net = net_for(Plan.chunked(3, 2), optimizer=sgd)
    fit(net, toy_data, steps=4, batch_size=32, lr_schedule=lambda t: 0.5 ** t, progress=False)
    for stage in net.stages:
        assert stage.optimizer.param_groups[0]["lr"] == 0.2 * 0.5 ** 3
    frozen = net_for(Plan.chunked(3, 2), optimizer=sgd)
    before = [p.clone() for p in frozen.parameters()]
    fit(frozen, toy_data, steps=3, batch_size=32, lr_schedule=lambda t: 0.0, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, frozen.parameters()))
    net = net_for(Plan.greedy(2), optimizer=sgd)
    fit(net, toy_data, steps=10, batch_size=32, lr_schedule="cosine", progress=False)
    want = 0.2 * 0.5 * (1 + math.cos(math.pi * 9 / 10))
    assert [s.optimizer.param_groups[0]["lr"] for s in net.stages] == [want, want]
    assert cosine(10)(0) == 1.0 and cosine(10)(5) == pytest.approx(0.5)


def test_resume_after_interruption_is_bitwise_the_uninterrupted_run(toy_data, tmp_path):
    plan = Plan.overlapping(3)
    kwargs = dict(steps=12, batch_size=32, eval_every=4, lr_schedule="cosine", progress=False)
    whole = net_for(plan, p=0.2)
    want = fit(whole, toy_data, **kwargs)

    path = tmp_path / "run.pt"
    broken = net_for(plan, p=0.2)
    calls = [0]

    def interrupt(module, args):
        calls[0] += 1
        if calls[0] == 10:  # block 1 runs once per training step: this is step 10
            raise KeyboardInterrupt

    hook = broken.blocks[1].register_forward_pre_hook(
        lambda m, a: interrupt(m, a) if m.training else None)
    with pytest.raises(KeyboardInterrupt):
        fit(broken, toy_data, checkpoint=path, checkpoint_every=3, **kwargs)
    hook.remove()
    assert torch.load(path, weights_only=True)["step"] == 9
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]  # no temporary file left behind

    resumed = net_for(plan, seed=1, p=0.2)  # other initial weights: the checkpoint must win
    got = fit(resumed, toy_data, checkpoint=path, resume=True, **kwargs)
    for (name, a), b in zip(whole.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name
    assert got == want

    finished = net_for(plan, seed=2, p=0.2)
    assert fit(finished, toy_data, checkpoint=path, resume=True, **kwargs) == want
    assert all(torch.equal(a, b) for a, b in zip(whole.parameters(), finished.parameters()))


def test_resume_refuses_a_checkpoint_of_another_run(toy_data, tmp_path):
    path = tmp_path / "run.pt"
    fit(net_for(Plan.greedy(2)), toy_data, steps=2, batch_size=32, checkpoint=path, progress=False)
    with pytest.raises(ValueError, match=r"written with plan=.*this run has plan="):
        fit(net_for(Plan.backprop(2)), toy_data, steps=2, batch_size=32, checkpoint=path,
            resume=True, progress=False)
    with pytest.raises(ValueError, match="written with batch_size=32, this run has batch_size=16"):
        fit(net_for(Plan.greedy(2)), toy_data, steps=2, batch_size=16, checkpoint=path,
            resume=True, progress=False)
    with pytest.raises(ValueError, match="is at step 2, past steps=1"):
        fit(net_for(Plan.greedy(2)), toy_data, steps=1, batch_size=32, checkpoint=path,
            resume=True, progress=False)


class Embed(nn.Module):
    """Token ids (B, T) -> (B, T, D)."""

    def __init__(self, vocab, d):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)

    def forward(self, x):
        return self.emb(x)


class Mix(nn.Module):
    """(B, T, D) -> (B, T, D): a causal running mean, then an MLP, with a residual."""

    def __init__(self, d):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d, d), nn.GELU())

    def forward(self, h):
        mean = h.cumsum(1) / torch.arange(1, h.shape[1] + 1, device=h.device)[:, None]
        return h + self.mlp(mean)


def test_language_model_data(tmp_path):
    vocab, t = 7, 12
    rng = np.random.default_rng(0)
    seq = (np.arange(300 * (t + 1)) * 3 + rng.integers(0, 2, 300 * (t + 1))) % vocab
    windows = seq.reshape(300, t + 1)
    data = {"x": windows[:240, :-1], "y": windows[:240, 1:], "x_test": windows[240:, :-1],
            "y_test": windows[240:, 1:]}
    torch.manual_seed(0)
    plan = Plan.greedy(2)
    net = LocalNet([Embed(vocab, 16), Mix(16)], [nn.Linear(16, vocab), nn.Linear(16, vocab)], plan,
                   optimizer=lambda ps: torch.optim.Adam(ps, lr=3e-2))
    h = fit(net, data, steps=30, batch_size=16, eval_every=30, progress=False)
    x, y = torch.from_numpy(data["x_test"]), torch.from_numpy(data["y_test"])
    logits = net(x)  # (B, T, V)
    assert h["test_loss"][-1][-1] == pytest.approx(
        F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1)).item())
    assert h["test_acc"][-1][-1] == pytest.approx((logits.argmax(-1) == y).float().mean().item())
    assert h["test_acc"][-1][-1] > 0.45  # next token is 3 or 4 steps on: chance is 1/7


def test_evaluate_restores_the_training_mode(toy_data):
    net = net_for(Plan.greedy(2), p=0.5)
    x, y = torch.from_numpy(toy_data["x_test"]), torch.from_numpy(toy_data["y_test"])
    (loss_a, acc_a), (loss_b, acc_b) = evaluate(net, x, y, batch_size=7), evaluate(net, x, y)
    assert loss_a == pytest.approx(loss_b, rel=1e-6) and acc_a == acc_b  # eval mode: no dropout
    assert net.training
    net.eval()
    evaluate(net, x, y)
    assert not net.training


def test_device_auto_and_float64_models(toy_data, capsys):
    net = net_for(Plan.greedy(2)).double()
    fit(net, toy_data, steps=2, batch_size=32, device="auto", progress=True)
    assert [s.device.type for s in net.stages] == ["cuda" if torch.cuda.is_available() else "cpu"] * 2
    assert "using" in capsys.readouterr().out


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(steps=2, epochs=1), ValueError, "give exactly one of steps or epochs"),
    (dict(), ValueError, "give exactly one of steps or epochs"),
    (dict(steps=0), ValueError, "the number of steps must be an int >= 1, got 0"),
    (dict(steps=2, batch_size=1000), ValueError, "batch_size 1000 is larger than the 240"),
    (dict(steps=2, eval_every=0), ValueError, "eval_every must be an int >= 1, got 0"),
    (dict(steps=2, batch_size=None), TypeError, "batch_size must be an int, got None"),
    (dict(steps=2, eval_every=None), TypeError, "eval_every must be an int, got None"),
    (dict(steps=2, eval_batch_size=None), TypeError, "eval_batch_size must be an int, got None"),
    (dict(steps=2, lr_schedule="linear"), ValueError, "lr_schedule must be None, 'cosine' or"),
    (dict(steps=2, lr_schedule=lambda t: -1), ValueError, r"lr_schedule\(0\) returned -1"),
])
def test_bad_arguments_are_named(toy_data, kwargs, error, match):
    with pytest.raises(error, match=match):
        fit(net_for(Plan.greedy(2)), toy_data, progress=False, **kwargs)


def test_bad_data_is_named(toy_data):
    with pytest.raises(KeyError, match=r"missing \['x_test', 'y_test'\]"):
        fit(net_for(Plan.greedy(2)), {"x": toy_data["x"], "y": toy_data["y"]}, steps=1)
    with pytest.raises(ValueError, match="x has 240 examples and y has 239; they must be the same"):
        fit(net_for(Plan.greedy(2)), {**toy_data, "y": toy_data["y"][1:]}, steps=1)
    with pytest.raises(ValueError, match="x_test has 0 examples and y_test has 0"):
        fit(net_for(Plan.greedy(2)), {**toy_data, "x_test": toy_data["x_test"][:0],
                                      "y_test": toy_data["y_test"][:0]}, steps=1)
    with pytest.raises(TypeError, match="net must be a minilocal.LocalNet, got Linear"):
        fit(nn.Linear(40, 3), toy_data, steps=1)


def test_a_damaged_checkpoint_never_resumes_silently(toy_data, tmp_path):
    from minilocal.checkpoint import CheckpointError

    kwargs = dict(steps=4, batch_size=32, progress=False)
    path = tmp_path / "run.pt"
    fit(net_for(Plan.greedy(2)), toy_data, steps=2, batch_size=32, checkpoint=path, progress=False)
    intact = path.read_bytes()
    want = fit(net_for(Plan.greedy(2)), toy_data, checkpoint=path, resume=True, **kwargs)
    for i in range(40):  # one flipped bit at 40 places spread over the file
        raw = bytearray(intact)
        raw[(2 * i + 1) * len(raw) // 80] ^= 1 << (i % 8)
        path.write_bytes(bytes(raw))
        try:
            got = fit(net_for(Plan.greedy(2)), toy_data, checkpoint=path, resume=True, **kwargs)
        except CheckpointError as e:
            assert str(path) in str(e)
        else:  # a bit the zip container never reads (padding): the run is the same
            assert got == want, i


def test_fit_checks_data_and_paths_before_the_first_step(toy_data, tmp_path):
    net = net_for(Plan.greedy(2))
    before = [p.clone() for p in net.parameters()]
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        fit(net, toy_data, steps=5, checkpoint=tmp_path / "file" / "run.pt", progress=False)
    with pytest.raises(ValueError, match=r"y_test must lie in \[0, 2\]"):
        fit(net, {**toy_data, "y_test": toy_data["y_test"] + 5}, steps=5, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_fast_net_schedules_checkpoints_and_resumes_bitwise(toy_data, tmp_path):
    """fit drives a LocalNet(fast=True) (one optimizer) like any other: oracle, the same run
    uninterrupted; and a fast checkpoint is refused by a per-stage net."""
    plan = Plan.overlapping(3)
    kwargs = dict(steps=8, batch_size=32, eval_every=4, lr_schedule="cosine", progress=False)

    def fast_net(seed=0):
        torch.manual_seed(seed)
        blocks = [Dense(40 if b == 0 else 16, 16) for b in range(plan.n_blocks)]
        heads = [nn.Linear(16, 3) for _ in range(plan.n_stages)]
        return LocalNet(blocks, heads, plan, optimizer=lambda ps: torch.optim.Adam(ps, lr=1e-2),
                        fast=True)

    whole = fast_net()
    want = fit(whole, toy_data, **kwargs)
    assert whole.optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * cosine(8)(7))
    path = tmp_path / "run.pt"

    def interrupt(step, losses):
        if step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(fast_net(), toy_data, checkpoint=path, callback=interrupt, **kwargs)
    assert torch.load(path, weights_only=True)["step"] == 4
    resumed = fast_net(seed=1)
    assert fit(resumed, toy_data, checkpoint=path, resume=True, **kwargs) == want
    assert all(torch.equal(a, b) for a, b in zip(whole.parameters(), resumed.parameters()))
    with pytest.raises(ValueError, match="written with optimizer="):
        fit(net_for(plan), toy_data, checkpoint=path, resume=True, **kwargs)


def test_fit_refuses_a_net_built_without_optimizers(toy_data):
    plan = Plan.greedy(2)
    blocks = [Dense(40 if b == 0 else 16, 16, 0.0) for b in range(plan.n_blocks)]
    net = LocalNet(blocks, [nn.Linear(16, 3) for _ in range(plan.n_stages)], plan, optimizer=None)
    with pytest.raises(ValueError, match=r"built with optimizer=None \(evaluation only\)"):
        fit(net, toy_data, steps=1, progress=False)
