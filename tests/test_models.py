"""Model builders: shapes for every Plan, gradients against plain autograd, the MLP's numpy twin."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minilocal import LocalNet, Plan
from minilocal.models import CausalSelfAttention, cnn1d, mlp, resnet1d, resnet2d, tiny_lm
from minilocal.numpy_core import init_mlp, local_grads

torch.set_num_threads(1)

PLANS = [Plan.backprop(4), Plan.greedy(4), Plan.overlapping(4), Plan.chunked(4, 2),
         Plan(stages=((0, 1), (2,), (3,)), overlap=1), Plan(stages=((0,), (1, 2), (3,)), overlap=2)]
PLAN_IDS = ["backprop", "greedy", "overlapping", "chunked2", "general", "overlap2"]
VOCAB = 7

# Small float64 versions of every model and a batch for each: (build(plan), x, y).
SMALL = {
    "mlp": (lambda p: mlp(p, d_in=6, width=5, n_classes=3, dtype=torch.float64),
            lambda g: torch.randn(4, 6, generator=g, dtype=torch.float64), (4,)),
    "cnn1d": (lambda p: cnn1d(p, channels=3, d_in=12, n_classes=3, dtype=torch.float64),
              lambda g: torch.randn(4, 12, generator=g, dtype=torch.float64), (4,)),
    "resnet1d": (lambda p: resnet1d(p, channels=3, d_in=12, n_classes=3, dtype=torch.float64),
                 lambda g: torch.randn(4, 12, generator=g, dtype=torch.float64), (4,)),
    "resnet2d": (lambda p: resnet2d(p, channels=2, n_classes=3, dtype=torch.float64),
                 lambda g: torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64), (4,)),
    "tiny_lm": (lambda p: tiny_lm(p, VOCAB, d_model=8, n_heads=2, block_size=6,
                                  dtype=torch.float64),
                lambda g: torch.randint(0, VOCAB, (4, 5), generator=g), (4, 5)),
}


def small_case(name, plan, seed=0):
    build, make_x, y_shape = SMALL[name]
    g = torch.Generator().manual_seed(seed)
    x = make_x(g)
    n_out = VOCAB if name == "tiny_lm" else 3
    y = torch.randint(0, n_out, y_shape, generator=g)
    return (*build(plan), x, y)


def ce(logits, y):
    """Mean cross-entropy over every position, written here rather than taken from LocalNet."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def autograd_oracle(blocks, heads, plan, x, y, losses_to_use=None):
    """Gradients by the definition: one plain forward (no detach); block l gets the sum of
    d loss_s / d theta_l over the stages s with l in plan.trained_by(s); head s gets only loss_s.
    ``losses_to_use(l)`` overrides which losses train block l."""
    hs, h = [], x
    for block in blocks:
        h = block(h)
        hs.append(h)
    losses = [ce(heads[s](hs[stage[-1]]), y) for s, stage in enumerate(plan.stages)]
    grads = {}
    for s, loss in enumerate(losses):
        named = [(f"heads.{s}.{n}", p) for n, p in heads[s].named_parameters()]
        for l in range(plan.n_blocks):
            trains = l in plan.trained_by(s) if losses_to_use is None else s in losses_to_use(l)
            if trains:
                named += [(f"blocks.{l}.{n}", p) for n, p in blocks[l].named_parameters()]
        gs = torch.autograd.grad(loss, [p for _, p in named], retain_graph=True)
        for (name, _), g in zip(named, gs):
            grads[name] = grads[name] + g if name in grads else g
    return grads, [loss.item() for loss in losses]


def forward_all(blocks, heads, plan, x):
    """Every block's output and every head's output, through plain module calls."""
    hs, h = [], x
    for block in blocks:
        h = block(h)
        hs.append(h)
    return hs, [heads[s](hs[stage[-1]]) for s, stage in enumerate(plan.stages)]


# --- building and chaining ----------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.parametrize("plan", PLANS + [Plan.greedy(3), Plan.chunked(6, 3)],
                         ids=PLAN_IDS + ["greedy3", "chunked6of3"])
def test_blocks_chain_and_every_head_gives_logits(name, plan):
    blocks, heads, x, y = small_case(name, plan)
    assert len(blocks) == plan.n_blocks and len(heads) == plan.n_stages
    _, outs = forward_all(blocks, heads, plan, x)
    n_out = VOCAB if name == "tiny_lm" else 3
    assert [tuple(o.shape) for o in outs] == [(*y.shape, n_out)] * plan.n_stages
    assert all(o.dtype == torch.float64 for o in outs)


def test_cnn1d_block_shapes_by_hand():
    # d_in 40, three stride-2 blocks then stride 1: 40 -> 20 -> 10 -> 5 -> 5 -> 5
    plan = Plan.greedy(5)
    blocks, heads = cnn1d(plan)
    hs, outs = forward_all(blocks, heads, plan, torch.zeros(2, 40))
    assert [tuple(h.shape) for h in hs] == [(2, 64, 20), (2, 64, 10), (2, 64, 5), (2, 64, 5),
                                            (2, 64, 5)]
    assert [h[1].in_features for h in heads] == [64 * 20, 64 * 10, 64 * 5, 64 * 5, 64 * 5]
    pooled = cnn1d(plan, head="pool")[1]
    assert [h[2].in_features for h in pooled] == [64] * 5


def test_resnet_block_shapes_by_hand():
    # 4 blocks downsample at 1 and 3; 2-D doubles the channels there (16 -> 32 -> 64)
    plan = Plan.greedy(4)
    blocks, heads = resnet2d(plan)
    hs, _ = forward_all(blocks, heads, plan, torch.zeros(2, 3, 32, 32))
    assert [tuple(h.shape[1:]) for h in hs] == [(16, 32, 32), (32, 16, 16), (32, 16, 16),
                                                (64, 8, 8)]
    blocks, heads = resnet1d(plan)
    hs, _ = forward_all(blocks, heads, plan, torch.zeros(2, 40))
    assert [tuple(h.shape[1:]) for h in hs] == [(32, 40), (32, 20), (32, 20), (32, 10)]
    assert [h[1].in_features for h in heads] == [32 * 40, 32 * 20, 32 * 20, 32 * 10]


# --- gradient semantics: LocalNet on these models equals plain autograd -----------------------
@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.parametrize("plan", PLANS, ids=PLAN_IDS)
def test_local_backward_matches_autograd_oracle(name, plan):
    blocks, heads, x, y = small_case(name, plan)
    want, want_losses = autograd_oracle(blocks, heads, plan, x, y)
    net = LocalNet(blocks, heads, plan)
    losses = net.local_backward(x, y)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-12)
    got = dict(net.named_parameters())
    assert set(got) == set(want)
    for key, g in want.items():
        torch.testing.assert_close(got[key].grad, g, rtol=1e-10, atol=1e-13, msg=key)


@pytest.mark.parametrize("name", ["cnn1d", "tiny_lm"])
def test_greedy_block0_gets_nothing_from_later_losses(name):
    plan = Plan.greedy(4)
    blocks, heads, x, y = small_case(name, plan)
    own_only, _ = autograd_oracle(blocks, heads, plan, x, y, losses_to_use=lambda l: {l})
    every_later, _ = autograd_oracle(blocks, heads, plan, x, y,
                                     losses_to_use=lambda l: set(range(l, 4)))
    net = LocalNet(blocks, heads, plan)
    net.local_backward(x, y)
    for key, p in net.blocks[0].named_parameters():
        torch.testing.assert_close(p.grad, own_only[f"blocks.0.{key}"], rtol=1e-10, atol=1e-13)
        # the later losses do reach block 0 through a plain forward, so leaving them out matters
        assert not torch.allclose(p.grad, every_later[f"blocks.0.{key}"], rtol=1e-6, atol=1e-9)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list(SMALL))
def test_models_on_cuda_give_the_cpu_gradients(name):
    import copy

    plan = Plan(stages=((0, 1), (2,), (3,)), overlap=1)
    blocks, heads, x, y = small_case(name, plan)
    cpu = LocalNet(copy.deepcopy(blocks), copy.deepcopy(heads), plan)
    gpu = LocalNet(blocks, heads, plan, devices="cuda")
    np.testing.assert_allclose(gpu.local_backward(x.cuda(), y.cuda()), cpu.local_backward(x, y),
                               rtol=1e-9)
    want = dict(cpu.named_parameters())
    for key, p in gpu.named_parameters():
        torch.testing.assert_close(p.grad.cpu(), want[key].grad, rtol=1e-8, atol=1e-11, msg=key)


# --- the MLP is the numpy core's twin -----------------------------------------------------------
@pytest.mark.parametrize("plan", PLANS, ids=PLAN_IDS)
def test_mlp_state_dict_matches_init_mlp_names_and_shapes(plan):
    net = LocalNet(*mlp(plan, d_in=40, width=128, n_classes=10), plan)
    params = init_mlp(plan, d_in=40, width=128, n_classes=10)
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == \
           {k: v.shape for k, v in params.items()}


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("plan", [Plan.greedy(3), Plan(stages=((0, 1), (2,)), overlap=1)],
                         ids=["greedy", "general"])
def test_mlp_gradients_equal_numpy_core_on_shared_weights(plan, activation):
    params = init_mlp(plan, d_in=6, width=5, n_classes=3, seed=1)
    net = LocalNet(*mlp(plan, d_in=6, width=5, n_classes=3, activation=activation,
                        dtype=torch.float64), plan)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 6)), rng.integers(0, 3, size=8)
    want, want_losses = local_grads(params, x, y, plan, activation)
    losses = net.local_backward(torch.from_numpy(x), torch.from_numpy(y))
    np.testing.assert_allclose(losses, want_losses, rtol=1e-12)
    for key, p in net.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), want[key], rtol=1e-10, atol=1e-13, err_msg=key)


# --- the Transformer -----------------------------------------------------------------------------
def test_attention_equals_masked_softmax_by_hand():
    torch.manual_seed(0)
    attn = CausalSelfAttention(d_model=6, n_heads=2).double()
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    q, k, v = attn.qkv(x).split(6, dim=2)
    heads = []
    for h in range(2):
        cols = slice(3 * h, 3 * h + 3)
        scores = q[..., cols] @ k[..., cols].transpose(1, 2) / math.sqrt(3)    # (B, T, T)
        scores = scores.masked_fill(torch.ones(5, 5).triu(1).bool(), float("-inf"))
        heads.append(scores.softmax(-1) @ v[..., cols])                          # (B, T, 3)
    torch.testing.assert_close(attn(x), attn.proj(torch.cat(heads, dim=-1)), rtol=1e-12, atol=0)


def test_lm_is_causal():
    plan = Plan.greedy(2)
    blocks, heads = tiny_lm(plan, VOCAB, d_model=8, n_heads=2, block_size=8, dtype=torch.float64)
    idx = torch.randint(0, VOCAB, (1, 8), generator=torch.Generator().manual_seed(0))
    changed = idx.clone()
    changed[0, 5] = (idx[0, 5] + 1) % VOCAB
    _, before = forward_all(blocks, heads, plan, idx)
    _, after = forward_all(blocks, heads, plan, changed)
    for a, b in zip(before, after):
        torch.testing.assert_close(a[:, :5], b[:, :5], rtol=0, atol=0)   # the past cannot see it
        assert not torch.allclose(a[:, 5:], b[:, 5:])                    # the present and future do


def test_lm_heads_are_untied_from_the_embedding():
    blocks, heads = tiny_lm(Plan.greedy(2), VOCAB)
    embedding = blocks[0][0].tok.weight
    assert all(h[1].weight.data_ptr() != embedding.data_ptr() for h in heads)


# --- seeds, dtypes and errors -------------------------------------------------------------------
@pytest.mark.parametrize("build", [mlp, cnn1d, resnet1d, resnet2d,
                                   lambda p, **k: tiny_lm(p, 5, **k)],
                         ids=["mlp", "cnn1d", "resnet1d", "resnet2d", "tiny_lm"])
def test_seed_reproducible_and_global_rng_untouched(build):
    plan = Plan.greedy(2)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = LocalNet(*build(plan, seed=7), plan).state_dict()
    assert torch.equal(torch.rand(3), expected_next)
    b = LocalNet(*build(plan, seed=7), plan).state_dict()
    c = LocalNet(*build(plan, seed=8), plan).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    weights = [k for k in a if a[k].is_floating_point() and a[k].numel() > 1]
    assert weights and any(not torch.equal(a[k], c[k]) for k in weights)
    assert all(v.dtype == torch.float32 for v in a.values() if v.is_floating_point())


@pytest.mark.parametrize("call, match", [
    (lambda: mlp("greedy"), "plan must be a minilocal.Plan"),
    (lambda: mlp(Plan.greedy(2), width=0), "width must be an int >= 1, got 0"),
    (lambda: mlp(Plan.greedy(2), activation="gelu"), "activation must be one of"),
    (lambda: mlp(Plan.greedy(2), seed=-1), "seed must be an int >= 0"),
    (lambda: mlp(Plan.greedy(2), dtype=torch.int64), "dtype must be a floating torch dtype"),
    (lambda: cnn1d(Plan.greedy(4), 3), "n_blocks=3 but the plan has 4 blocks"),
    (lambda: cnn1d(Plan.greedy(2), kernel_size=4), "kernel_size must be odd"),
    (lambda: cnn1d(Plan.greedy(2), head="max"), "head must be one of"),
    (lambda: resnet1d(Plan.greedy(2), channels=2.5), "channels must be an int"),
    (lambda: resnet2d(Plan.greedy(4), downsample=(7,)), r"downsample lists .* in \[0, 3\]"),
    (lambda: tiny_lm(Plan.greedy(2), 0), "vocab_size must be an int >= 1"),
    (lambda: tiny_lm(Plan.greedy(2), 9, d_model=10, n_heads=4), r"d_model \(10\) must be"),
])
def test_builders_reject_bad_arguments(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call()


def test_lm_rejects_too_long_or_float_input():
    blocks, _ = tiny_lm(Plan.greedy(1), VOCAB, block_size=4)
    with pytest.raises(ValueError, match="sequence length 5 exceeds block_size 4"):
        blocks[0](torch.zeros(2, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"token ids of shape \(B, T\)"):
        blocks[0](torch.zeros(2, 4))


# --- training sanity: local losses fall ---------------------------------------------------------
def test_cnn1d_local_losses_fall_on_mnist1d():
    from minilocal.data import as_tensors, mnist1d

    data = as_tensors(mnist1d())
    plan = Plan.overlapping(4)
    net = LocalNet(*cnn1d(plan), plan, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    g = torch.Generator().manual_seed(0)
    history = []
    for _ in range(40):
        idx = torch.randint(0, len(data["x"]), (128,), generator=g)
        history.append(net.train_step(data["x"][idx], data["y"][idx]))
    first, last = np.array(history[:3]).mean(0), np.array(history[-5:]).mean(0)
    assert (last < 0.75 * first).all(), (first, last)


def test_tiny_lm_local_losses_fall_on_generated_text():
    from minilocal.text import CharTokenizer, lm_dataset, make_corpus

    text = make_corpus(400, seed=0)
    tok = CharTokenizer(text)
    x, y = (torch.from_numpy(a) for a in lm_dataset(tok.encode(text), block_size=32))
    plan = Plan.greedy(2)
    net = LocalNet(*tiny_lm(plan, tok.vocab_size, d_model=32, block_size=32), plan,
                   optimizer=lambda p: torch.optim.Adam(p, lr=3e-3))
    g = torch.Generator().manual_seed(0)
    history = []
    for _ in range(40):
        idx = torch.randint(0, len(x), (16,), generator=g)
        history.append(net.train_step(x[idx], y[idx]))
    first, last = np.array(history[:3]).mean(0), np.array(history[-5:]).mean(0)
    assert math.isclose(first[0], math.log(tok.vocab_size), rel_tol=0.05)  # uniform at the start
    assert (last < 0.75 * first).all(), (first, last)
