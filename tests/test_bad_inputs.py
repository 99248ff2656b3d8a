"""Bad input, one table: every case names its exception type and a fragment of the message.

API cases call the library; CLI cases run ``main(argv)``, which must exit with code 2 and one
line on stderr before anything trains (``CliError`` carries that line). Checkpoint cases resume
from damaged or foreign copies of one checkpoint written once per module. No process is started.
"""
import contextlib
import functools
import io
import pickle
import re
import shutil
import sys
import types
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from minilocal import LocalNet, Plan, models
from minilocal.__main__ import main
from minilocal.checkpoint import CheckpointError
from minilocal.data import CIFAR10_BIN_FILES, CIFAR10_FILES, as_tensors, cifar10, mnist1d
from minilocal.local import stage_step
from minilocal.runtime import (ArrayBatches, Job, ModelSpec, RandomBatches, run_distributed,
                               run_pipeline, run_sequential, sgd, simulate)
from minilocal.runtime.distributed import Options
from minilocal.runtime.layout import Layout
from minilocal.text import CharTokenizer, lm_dataset, load_text, make_corpus
from minilocal.train import fit

torch.set_num_threads(1)


class CliError(Exception):
    """``main`` exited with code 2; the message is its one line of stderr."""


def cli(*argv):
    def run(ctx):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
            main(["train", *argv])
        lines = err.getvalue().splitlines()
        assert exit_.value.code == 2 and len(lines) == 1, (exit_.value.code, lines)
        raise CliError(lines[0])
    return run


# --- builders ------------------------------------------------------------------------------------
def net(plan=None, n_classes=3, dtype=torch.float32, optimizer=None, width=16):
    plan = plan or Plan.greedy(2)
    blocks, heads = models.mlp(plan, d_in=40, width=width, n_classes=n_classes, dtype=dtype)
    return LocalNet(blocks, heads, plan,
                    optimizer=optimizer or (lambda ps: torch.optim.Adam(ps, lr=1e-2)))


def batch(n=8, classes=3, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 40, generator=g).to(dtype), torch.randint(0, classes, (n,), generator=g)


def toy(n=64, classes=3):
    rng = np.random.default_rng(0)
    x, x_test = rng.normal(size=(n, 40)).astype(np.float32), rng.normal(size=(32, 40))
    return {"x": x, "y": rng.integers(0, classes, n), "x_test": x_test.astype(np.float32),
            "y_test": rng.integers(0, classes, 32)}


def train_step(x=None, y=None, **kw):
    xb, yb = batch()
    return lambda ctx: net(**kw).train_step(xb if x is None else x, yb if y is None else y)


def fit_with(data=None, **kw):
    kw = {"steps": 2, "batch_size": 16, "progress": False, **kw}
    return lambda ctx: fit(net(), toy() if data is None else data, **kw)


def with_block(block, plan=None):
    """A net (default greedy(2)) whose block 1 is replaced."""
    def build(ctx):
        blocks, heads = models.mlp(plan or Plan.greedy(2), d_in=40, width=16, n_classes=3)
        blocks[1] = block
        return LocalNet(blocks, heads, plan or Plan.greedy(2)).train_step(*batch())
    return build


class Squeeze(nn.Module):
    """A head that returns (B,) instead of (B, C)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 3)

    def forward(self, h):
        return self.lin(h)[:, 0]


def with_head(head, at=1):
    def build(ctx):
        blocks, heads = models.mlp(Plan.greedy(2), d_in=40, width=16, n_classes=3)
        heads[at] = head
        return LocalNet(blocks, heads, Plan.greedy(2)).train_step(*batch())
    return build


def lm_step(ids):
    def run(ctx):
        plan = Plan.greedy(2)
        lm = LocalNet(*models.tiny_lm(plan, vocab_size=10, d_model=16, n_heads=2, block_size=8),
                      plan)
        return lm.train_step(ids, torch.zeros_like(ids) if not ids.is_floating_point()
                             else torch.zeros(ids.shape, dtype=torch.long))
    return run


def job(plan=None, **kw):
    spec = {"model": ModelSpec(models.mlp, {"width": 16}), "plan": plan or Plan.greedy(2),
            "batches": RandomBatches(8), "optimizer": functools.partial(sgd, lr=0.2),
            "n_steps": 3, **kw}
    return Job(**spec)


# --- checkpoints ---------------------------------------------------------------------------------
@dataclass
class Ctx:
    tmp: object
    checkpoint: object
    monkeypatch: object

    def copy(self, change=None):
        """A copy of the module's checkpoint, changed by ``change(bytes) -> bytes``."""
        path = self.tmp / "copy.pt"
        shutil.copy(self.checkpoint, path)
        if change is not None:
            path.write_bytes(change(path.read_bytes()))
        return path


def resume(change=None, write=None, **kw):
    """fit resumes from a changed copy of the checkpoint (or a file ``write(path)`` made)."""
    def run(ctx):
        path = ctx.copy(change)
        if write is not None:
            write(path)
        settings = {"steps": 4, "batch_size": 16, "progress": False, **kw}
        model = settings.pop("model", None) or net()
        return fit(model, settings.pop("data", None) or toy(), checkpoint=path, resume=True,
                   **settings)
    return run


def flip_bit(at):
    def change(raw):
        raw = bytearray(raw)
        raw[int(len(raw) * at)] ^= 0x10
        return bytes(raw)
    return change


def payload_offset(raw):
    """Where the checkpoint's payload (a nested torch.save zip) starts inside the file."""
    return raw.index(b"PK\x03\x04", 100)


def flip_in_payload(raw):
    raw = bytearray(raw)
    raw[payload_offset(raw) + 600] ^= 0x01
    return bytes(raw)


def overwrite_64(raw):
    at = payload_offset(raw) + 512
    return raw[:at] + bytes(64) + raw[at + 64:]


def rewrite(**changes):
    """Load the checkpoint's outer dict, change entries, save it back (no longer matching)."""
    def write(path):
        outer = torch.load(path, weights_only=True)
        outer.update(changes)
        torch.save(outer, path)
    return write


# --- CIFAR files ---------------------------------------------------------------------------------
class RunsCode:
    """Unpickling this calls os.system: a crafted data file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def cifar_folder(tmp, write):
    """A folder of CIFAR python batches; ``write(name, file)`` writes each one."""
    folder = tmp / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name in CIFAR10_FILES:
        with open(folder / name, "wb") as f:
            write(name, f)
    return tmp / "cifar"


def good_batch(f, n=2):
    pickle.dump({b"data": np.zeros((n, 3072), np.uint8), b"labels": [0] * n}, f)


def cifar_with(bad):
    def run(ctx):
        root = cifar_folder(ctx.tmp, lambda name, f: bad(ctx, f) if name == "data_batch_2"
                            else good_batch(f))
        return cifar10(root=root)
    return run


def cifar_bin_with(raw):
    def run(ctx):
        folder = ctx.tmp / "bin" / "cifar-10-batches-bin"
        folder.mkdir(parents=True)
        for name in CIFAR10_BIN_FILES:
            (folder / name).write_bytes(raw if name == "test_batch.bin" else bytes(2 * 3073))
        return cifar10(root=ctx.tmp / "bin")
    return run


def text_file(content):
    def run(ctx):
        path = ctx.tmp / "corpus.txt"
        path.write_bytes(content)
        return load_text(path)
    return run


def file_then(name, fn):
    """``fn(ctx, path)`` with a regular file at tmp/name (to put paths under a file)."""
    def run(ctx):
        (ctx.tmp / name).write_text("a file")
        return fn(ctx, ctx.tmp / name)
    return run


def notebook_fn(ctx, main_file=None):
    """A Job whose model function lives in __main__ of a notebook (or of ``python -``)."""
    fake = types.ModuleType("__main__")
    if main_file:
        fake.__file__ = main_file
    ctx.monkeypatch.setitem(sys.modules, "__main__", fake)

    def my_model(plan):
        return models.mlp(plan)
    my_model.__module__ = "__main__"
    return run_distributed(job(model=ModelSpec(my_model)))


def nested_model(plan):
    return models.mlp(plan)


def under_torchrun(world, *argv):
    def run(ctx):
        ctx.monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
        ctx.monkeypatch.setenv("RANK", "0")
        ctx.monkeypatch.setenv("WORLD_SIZE", str(world))
        return cli(*argv)(ctx)
    return run


LONG_IDS = torch.tensor([[1, 2, 3, 12]])
bf16_job = job(model=ModelSpec(models.mlp, {"width": 16, "dtype": torch.bfloat16}))

CASES = [
    # --- CLI: options that do not apply -------------------------------------------------------
    ("cli overlap with greedy", cli("--plan", "greedy", "--overlap", "2"), CliError,
     "--overlap applies to --plan overlapping or chunked, not --plan greedy"),
    ("cli chunks with greedy", cli("--plan", "greedy", "--overlap", "2", "--chunks", "3"),
     CliError, "--chunks applies to --plan chunked, not --plan greedy; drop it"),
    ("cli chunks with overlapping", cli("--plan", "overlapping", "--chunks", "2"), CliError,
     "--chunks applies to --plan chunked"),
    ("cli overlap with backprop", cli("--plan", "backprop", "--overlap", "1"), CliError,
     "not --plan backprop"),
    ("cli delay with greedy", cli("--plan", "greedy", "--delay", "1"), CliError,
     "--delay applies only to plans with overlap"),
    ("cli delay with chunked, no overlap", cli("--plan", "chunked", "--delay", "1"), CliError,
     "not chunked with overlap 0"),
    ("cli delay with sequential", cli("--runner", "sequential", "--plan", "overlapping",
                                      "--delay", "1"), CliError,
     "--runner sequential is synchronous; --delay 1 needs --runner simulator or distributed"),
    ("cli window with sequential", cli("--runner", "sequential", "--window", "3"), CliError,
     "--window applies to --runner distributed, not --runner sequential"),
    ("cli timeout with simulator", cli("--runner", "simulator", "--timeout", "5"), CliError,
     "--timeout applies to --runner distributed"),
    ("cli backend with sequential", cli("--runner", "sequential", "--backend", "gloo"), CliError,
     "--backend applies to --runner distributed"),
    ("cli device with simulator", cli("--runner", "simulator", "--device", "cpu"), CliError,
     "--device applies to --runner distributed"),
    ("cli abbreviation", cli("--over", "2"), CliError, "unrecognized arguments: --over 2"),
    ("cli unknown option", cli("--bogus"), CliError, "unrecognized arguments: --bogus"),
    ("cli unknown plan", cli("--plan", "fancy"), CliError, "invalid choice: 'fancy'"),
    # --- CLI: values ----------------------------------------------------------------------------
    ("cli lr negative", cli("--lr", "-1"), CliError,
     "argument --lr: must be a finite number in (0, 10], got '-1'"),
    ("cli lr zero", cli("--lr", "0"), CliError, "got '0'; Adam's usual range"),
    ("cli lr nan", cli("--lr", "nan"), CliError, "got 'nan'"),
    ("cli lr inf", cli("--lr", "inf"), CliError, "got 'inf'"),
    ("cli lr absurd", cli("--lr", "1e30"), CliError, "got '1e30'"),
    ("cli lr text", cli("--lr", "fast"), CliError, "got 'fast'"),
    ("cli timeout zero", cli("--timeout", "0"), CliError,
     "argument --timeout: must be a finite number in (0, 86400], got '0'"),
    ("cli timeout negative", cli("--timeout", "-5"), CliError, "got '-5'"),
    ("cli timeout nan", cli("--timeout", "nan"), CliError, "got 'nan'"),
    ("cli seed negative", cli("--seed", "-1"), CliError,
     "argument --seed: must be an int in [0, 2147483647], got -1"),
    ("cli seed too large", cli("--seed", str(2 ** 31)), CliError, "got 2147483648"),
    ("cli steps zero", cli("--steps", "0"), CliError,
     "argument --steps: must be an int in [1, 1000000000], got 0"),
    ("cli steps float syntax", cli("--steps", "1e20"), CliError, "got '1e20'"),
    ("cli steps huge", cli("--steps", str(10 ** 20)), CliError, f"got {10 ** 20}"),
    ("cli blocks zero", cli("--blocks", "0"), CliError,
     "argument --blocks: must be an int in [1, 64]"),
    ("cli blocks too many", cli("--blocks", "65"), CliError, "got 65"),
    ("cli batch size zero", cli("--batch-size", "0"), CliError, "argument --batch-size"),
    ("cli batch size above the data", cli("--batch-size", "5000"), CliError,
     "--batch-size 5000 is larger than the 4000 MNIST-1D training examples"),
    ("cli width zero", cli("--width", "0"), CliError, "argument --width"),
    ("cli window zero", cli("--window", "0"), CliError,
     "argument --window: must be an int in [1, 1024]"),
    ("cli delay negative", cli("--plan", "overlapping", "--delay", "-1"), CliError,
     "argument --delay"),
    ("cli overlap reaching two stages", cli("--plan", "overlapping", "--overlap", "2"), CliError,
     "the runtime sends backward messages one hop only"),
    ("cli overlap past the blocks", cli("--plan", "overlapping", "--overlap", "4"), CliError,
     "overlap must be between 0 and n_blocks - 1 (3), got 4"),
    ("cli chunks past the blocks", cli("--plan", "chunked", "--chunks", "5", "--blocks", "3"),
     CliError, "chunks must be between 1 and n_blocks (3), got 5"),
    ("cli nccl on cpu", cli("--backend", "nccl", "--device", "cpu"), CliError,
     "and 'cpu' needs backend 'gloo' or 'auto'"),
    ("cli out is a folder", lambda ctx: cli("--out", str(ctx.tmp))(ctx), CliError,
     "is a folder; give a file path inside it"),
    ("cli out under a file", file_then("f", lambda ctx, f: cli("--out", str(f / "run.json"))(ctx)),
     CliError, "is a file, not a folder"),
    ("cli torchrun world size", under_torchrun(3, "--blocks", "4"), CliError,
     "the plan has 4 stages but torchrun started 3 processes"),
    ("cli torchrun sequential", under_torchrun(2, "--blocks", "2", "--runner", "sequential"),
     CliError, "under torchrun every process is one stage"),
    # --- a training step ------------------------------------------------------------------------
    ("float64 input, float32 net", train_step(x=batch(dtype=torch.float64)[0]), TypeError,
     "stage 0 expects float32 input, got float64"),
    ("float32 input, bfloat16 net", train_step(dtype=torch.bfloat16), TypeError,
     "stage 0 expects bfloat16 input, got float32"),
    ("int input to an MLP", train_step(x=torch.ones(8, 40, dtype=torch.long)), TypeError,
     "has float32 weights but got int64 input; integer inputs fit only a block that embeds them"),
    ("float64 block in a float32 stage", with_block(models.Dense(16, 16).double(),
                                                    Plan.backprop(2)), TypeError,
     "stage 0, block 1 of the stage (Dense) has float64 weights but its input is float32"),
    ("float64 stage after a float32 one", with_block(models.Dense(16, 16).double()), TypeError,
     "stage 1 expects float64 input (its weights' dtype) but stage 0 gives it float32"),
    ("float64 head in a float32 net", with_head(nn.Linear(16, 3).double()), TypeError,
     "head 1 has float64 weights but the stage's output is float32"),
    ("block that does not chain", with_block(models.Dense(32, 16)), RuntimeError,
     "Check that each block's output shape is the next block's input shape"),
    ("head that does not fit", with_head(nn.Linear(8, 3)), RuntimeError,
     "The head must accept the output of the stage's last block"),
    ("head output (B,)", with_head(Squeeze()), ValueError,
     "head 1 returned logits of shape (8,); a classifier head must return scores (B, C)"),
    ("float labels", train_step(y=batch()[1].float()), TypeError,
     "labels must be integer class indices, got dtype float32; convert with y.long()"),
    ("bool labels", train_step(y=batch()[1] > 0), TypeError, "got dtype bool"),
    ("complex labels", train_step(y=batch()[1].to(torch.complex64)), TypeError,
     "got dtype complex64"),
    ("labels (B, 1)", train_step(y=batch()[1][:, None]), ValueError,
     "labels of shape (8, 1) do not fit logits of shape (8, 3); they must have shape (8,)"),
    ("one-hot labels", train_step(y=torch.eye(3, dtype=torch.long)[batch()[1]]), ValueError,
     "they look one-hot: use y.argmax(-1)"),
    ("label too large", train_step(y=torch.full((8,), 3)), ValueError,
     "labels must lie in [0, 2] for a head with 3 outputs, got min 3, max 3"),
    ("negative label", train_step(y=torch.full((8,), -1)), ValueError, "got min -1"),
    ("fewer labels than examples", train_step(y=batch()[1][:7]), ValueError,
     "x has 8 examples but y has 7"),
    ("scalar label", train_step(y=torch.tensor(1)), ValueError, "y has none (a scalar)"),
    ("empty batch", train_step(x=torch.zeros(0, 40), y=torch.zeros(0, dtype=torch.long)),
     ValueError, "the batch is empty (x: (0, 40)); a step needs at least one example"),
    ("numpy input", train_step(x=np.zeros((8, 40), np.float32)), TypeError,
     "x must be a torch.Tensor, got ndarray; convert with torch.as_tensor(x)"),
    ("empty batch, one stage step", lambda ctx: stage_step(net().stages[0], torch.zeros(0, 40),
                                                           torch.zeros(0, dtype=torch.long)),
     ValueError, "stage 0: the batch is empty"),
    ("token id >= vocab", lm_step(LONG_IDS), ValueError,
     "token ids must lie in [0, 9] for its nn.Embedding of 10 rows, got min 1, max 12; build the "
     "model with vocab_size >= 13"),
    ("negative token id", lm_step(torch.tensor([[1, -1]])), ValueError, "got min -1"),
    ("float tokens", lm_step(torch.zeros(1, 4)), ValueError, "input must be token ids"),
    ("sequence past block_size", lm_step(torch.zeros(1, 9, dtype=torch.long)), ValueError,
     "sequence length 9 exceeds block_size 8"),
    ("check_batch of a bad batch", lambda ctx: net().check_batch(*batch(dtype=torch.float16)),
     TypeError, "stage 0 expects float32 input, got float16"),
    # --- building a LocalNet and a Plan ---------------------------------------------------------
    ("plan of no blocks", lambda ctx: Plan.greedy(0), ValueError, "n_blocks must be"),
    ("plan of a str", lambda ctx: Plan.greedy("4"), TypeError, "must be an int, got '4'"),
    ("too many chunks", lambda ctx: Plan.chunked(4, 5), ValueError,
     "n_chunks must be between 1 and 4, got 5"),
    ("overlap past the blocks", lambda ctx: Plan.overlapping(3, overlap=3), ValueError,
     "overlap must be between 0 and 2, got 3"),
    ("devices of the wrong length", lambda ctx: LocalNet(*models.mlp(Plan.greedy(3)),
                                                         Plan.greedy(3), devices=["cpu"] * 2),
     ValueError, "devices must list one device per stage (3), got 2"),
    ("optimizer not a factory", lambda ctx: LocalNet(*models.mlp(Plan.greedy(2)), Plan.greedy(2),
                                                     optimizer="adam"), TypeError,
     "optimizer must be a factory params -> torch.optim.Optimizer"),
    ("plan not a Plan", lambda ctx: LocalNet(*models.mlp(Plan.greedy(2)), ((0,), (1,))),
     TypeError, "plan must be a minilocal.Plan, got tuple"),
    ("too few heads", lambda ctx: LocalNet(models.mlp(Plan.greedy(2))[0],
                                           models.mlp(Plan.greedy(2))[1][:1], Plan.greedy(2)),
     ValueError, "so it needs 2 heads (one per stage), got 1"),
    # --- fit: data and arguments ----------------------------------------------------------------
    ("fit data as a list", fit_with(data=[np.zeros((4, 40))] * 4), TypeError,
     "fit: data must be a dict with keys x, y, x_test, y_test (e.g. minilocal.data.mnist1d()), "
     "got list"),
    ("fit data missing keys", fit_with(data={"x": np.zeros((4, 40)), "y": np.zeros(4)}), KeyError,
     "missing ['x_test', 'y_test']"),
    ("fit x and y differ", fit_with(data={**toy(), "y": toy()["y"][:-1]}), ValueError,
     "x has 64 examples and y has 63"),
    ("fit scalar entry", fit_with(data={**toy(), "y_test": 3}), ValueError,
     "data['y_test'] is a scalar"),
    ("fit ragged lists", fit_with(data={**toy(), "x": [[1.0, 2.0], [3.0]]}), TypeError,
     "data['x'] cannot be made a tensor"),
    ("fit y_test out of range", fit_with(data={**toy(), "y_test": np.full(32, 7)}), ValueError,
     "stage 0: y_test must lie in [0, 2] for a head with 3 outputs, got min 7"),
    ("fit y out of range", fit_with(data={**toy(), "y": np.full(64, -2)}), ValueError,
     "labels must lie in [0, 2]"),
    ("fit bool labels", fit_with(data={**toy(), "y": toy()["y"] > 0}), TypeError,
     "got dtype bool"),
    ("fit int inputs", fit_with(data={**toy(), "x": np.ones((64, 40), np.int64)}), TypeError,
     "integer inputs fit only a block that embeds them"),
    ("fit test inputs of another width", fit_with(data={**toy(), "x_test": np.ones((32, 30),
                                                                                   np.float32)}),
     RuntimeError, "failed on an input of shape (2, 30)"),
    ("fit steps zero", fit_with(steps=0), ValueError, "the number of steps must be an int >= 1"),
    ("fit steps bool", fit_with(steps=True), TypeError, "got True"),
    ("fit batch larger than data", fit_with(batch_size=100), ValueError,
     "batch_size 100 is larger than the 64 training examples"),
    ("fit eval_every zero", fit_with(eval_every=0), ValueError,
     "eval_every must be an int >= 1"),
    ("fit unknown schedule", fit_with(lr_schedule="linear"), ValueError,
     "lr_schedule must be None, 'cosine' or a callable"),
    ("fit net not a LocalNet", lambda ctx: fit(nn.Linear(40, 3), toy(), steps=1), TypeError,
     "net must be a minilocal.LocalNet, got Linear"),
    ("fit checkpoint under a file", file_then("f", lambda ctx, f: fit_with(
        checkpoint=f / "run.pt")(ctx)), NotADirectoryError, "is a file, not a folder"),
    ("fit checkpoint is a folder", lambda ctx: fit_with(checkpoint=ctx.tmp)(ctx),
     IsADirectoryError, "is a folder; give a file path inside it"),
    # --- fit: resuming --------------------------------------------------------------------------
    ("resume empty file", resume(lambda raw: b""), CheckpointError, "is empty (0 bytes)"),
    ("resume random bytes", resume(lambda raw: bytes(range(256)) * 8), CheckpointError,
     "is not a checkpoint: not a torch.save file (it starts with b"),
    ("resume truncated", resume(lambda raw: raw[:len(raw) // 2]), CheckpointError,
     "is damaged: torch.load could not read it"),
    ("resume a bit flipped in the payload", resume(flip_in_payload), CheckpointError,
     "is damaged: its contents do not match its sha256"),
    ("resume 64 bytes overwritten", resume(overwrite_64), CheckpointError, "is damaged"),
    ("resume a bit flipped at 40%", resume(flip_bit(0.4)), CheckpointError, "damaged"),
    ("resume a plain state_dict", resume(write=lambda p: torch.save(net().state_dict(), p)),
     CheckpointError, "it holds a plain state_dict; load weights with net.load_state_dict"),
    ("resume a checkpoint of format 1", resume(write=lambda p: torch.save(
        {"plan": {}, "model": {}, "optimizers": [], "step": 2}, p)), CheckpointError,
     "a checkpoint of an older minilocal (format 1"),
    ("resume a list", resume(write=lambda p: torch.save([1, 2], p)), CheckpointError,
     "it holds a list"),
    ("resume a pickled object", resume(write=lambda p: torch.save({"net": nn.Linear(2, 2)}, p)),
     CheckpointError, "it holds objects that a checkpoint never holds"),
    ("resume another version", resume(write=rewrite(version=3)), CheckpointError,
     "has format version 3; this minilocal reads version 2"),
    ("resume a changed step", resume(write=rewrite(step=1)), CheckpointError,
     "do not match its sha256"),
    ("resume on other data", resume(data={**toy(), "x": toy()["x"] + 1}), CheckpointError,
     "was written on other data"),
    ("resume with SGD instead of Adam", resume(model=net(
        optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1))), CheckpointError,
     "written with optimizer of stage 0=Adam("),
    ("resume another width", resume(model=net(width=8)), CheckpointError,
     "written with weight blocks.0.weight=(16, 40) float32, this run has weight "
     "blocks.0.weight=(8, 40) float32"),
    ("resume another plan", resume(model=net(Plan.backprop(2))), CheckpointError,
     "written with plan="),
    ("resume another seed", resume(seed=1), CheckpointError,
     "written with seed=0, this run has seed=1"),
    ("resume another batch size", resume(batch_size=8), CheckpointError,
     "written with batch_size=16, this run has batch_size=8"),
    ("resume past the steps", resume(steps=1), ValueError, "is at step 2, past steps=1"),
    # --- data files -----------------------------------------------------------------------------
    ("mnist1d tiny", lambda ctx: mnist1d(num_samples=5), ValueError,
     "num_samples must be an int >= 10, got 5"),
    ("as_tensors of a list", lambda ctx: as_tensors([1, 2]), TypeError, "data must be a dict"),
    ("cifar crafted pickle", cifar_with(lambda ctx, f: pickle.dump(RunsCode(ctx.tmp / "ran"), f)),
     ValueError, "which a data file never needs; it was refused, not run"),
    ("cifar truncated pickle", cifar_with(lambda ctx, f: f.write(pickle.dumps(
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 0]})[:-40])), ValueError,
     "data_batch_2 is truncated or corrupt"),
    ("cifar pickle of the wrong shape", cifar_with(lambda ctx, f: pickle.dump(
        {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 0]}, f)), ValueError,
     "does not hold CIFAR-10 images (N, 3072) uint8"),
    ("cifar pickle with a label 10", cifar_with(lambda ctx, f: pickle.dump(
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, f)), ValueError,
     "labels in 0..9"),
    ("cifar pickle of another dict", cifar_with(lambda ctx, f: pickle.dump({b"x": 1}, f)),
     ValueError, "holds no b'data' and b'labels' entries"),
    ("cifar binary truncated", cifar_bin_with(bytes(3073 + 100)), ValueError,
     "test_batch.bin has 3173 bytes, not a whole number of 3073-byte records"),
    ("cifar binary label 12", cifar_bin_with(bytes([12]) + bytes(3072)), ValueError,
     "labels in 0..9"),
    ("cifar missing", lambda ctx: cifar10(root=ctx.tmp / "nowhere"), FileNotFoundError,
     "minilocal never downloads"),
    # --- text -----------------------------------------------------------------------------------
    ("text of NUL bytes", text_file(bytes(64)), ValueError,
     "contains NUL characters (64 of 64, the first at position 0): it is a binary file"),
    ("text empty", text_file(b""), ValueError, "is empty; the LM needs some text"),
    ("text latin-1", text_file("café".encode("latin-1")), ValueError, "is not UTF-8 text"),
    ("text missing", lambda ctx: load_text(ctx.tmp / "none.txt"), FileNotFoundError,
     "does not exist"),
    ("tokenizer of empty text", lambda ctx: CharTokenizer(""), ValueError, "got an empty str"),
    ("tokenizer unknown character", lambda ctx: CharTokenizer("ab").encode("abZ"), ValueError,
     "character 'Z' at position 2 is not in the vocabulary"),
    ("tokenizer id out of range", lambda ctx: CharTokenizer("ab").decode([0, 5]), ValueError,
     "id 5 is outside the vocabulary [0, 1]"),
    ("lm_dataset too short", lambda ctx: lm_dataset(np.arange(3), 3), ValueError,
     "3 ids are too few for one window of block_size 3"),
    ("lm_dataset float ids", lambda ctx: lm_dataset(np.zeros(9), 2), ValueError,
     "ids must be a 1-D integer array"),
    ("corpus of no lines", lambda ctx: make_corpus(0), ValueError, "n_lines must be an int >= 1"),
    # --- runtime: batch sources and jobs --------------------------------------------------------
    ("RandomBatches(0)", lambda ctx: RandomBatches(0), ValueError,
     "RandomBatches: batch_size must be an int >= 1, got 0"),
    ("RandomBatches(-3)", lambda ctx: RandomBatches(-3), ValueError, "got -3"),
    ("RandomBatches(2.5)", lambda ctx: RandomBatches(2.5), ValueError, "got 2.5"),
    ("RandomBatches of one class", lambda ctx: RandomBatches(8, n_classes=1), ValueError,
     "n_classes must be an int >= 2, got 1"),
    ("RandomBatches negative seed", lambda ctx: RandomBatches(8, seed=-1), ValueError,
     "seed must be an int >= 0, got -1"),
    ("RandomBatches huge seed", lambda ctx: RandomBatches(8, seed=2 ** 40), ValueError,
     "seed must be < 2**31"),
    ("ArrayBatches of lists", lambda ctx: ArrayBatches([[0.0]] * 4, np.zeros(4)), TypeError,
     "ArrayBatches: x must be a numpy array, got list"),
    ("ArrayBatches larger than the data", lambda ctx: ArrayBatches(
        np.zeros((4, 2)), np.zeros(4), batch_size=5), ValueError,
     "batch_size 5 is larger than the 4 examples"),
    ("ArrayBatches x and y differ", lambda ctx: ArrayBatches(np.zeros((4, 2)), np.zeros(3)),
     ValueError, "x has 4 examples and y has 3"),
    ("Job of no steps", lambda ctx: job(n_steps=0), ValueError, "n_steps must be an int >= 1"),
    ("Job negative delay", lambda ctx: job(delay=-1), ValueError, "delay must be an int >= 0"),
    ("Job plan not a Plan", lambda ctx: job(plan="greedy"), TypeError,
     "plan must be a minilocal.Plan"),
    ("Job model not a ModelSpec", lambda ctx: job(model=models.mlp), TypeError,
     "model must be a ModelSpec"),
    ("Job batches not callable", lambda ctx: job(batches=[1, 2]), TypeError,
     "batches must be callable"),
    ("Job overlap two hops", lambda ctx: job(plan=Plan.overlapping(3, overlap=2)), ValueError,
     "the runtime sends backward messages one hop only"),
    ("lambda optimizer in a script", lambda ctx: run_distributed(job(
        optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1))), ValueError,
     "Job.optimizer ('<lambda>') cannot be sent to the worker processes"),
    ("nested model function", lambda ctx: run_distributed(job(model=ModelSpec(
        (lambda: (lambda plan: nested_model(plan)))()))), ValueError,
     "a lambda or a function defined inside another function cannot be pickled"),
    ("model function of a notebook", notebook_fn, ValueError,
     "Job.model.fn ('my_model') is defined in this notebook"),
    ("model function of python -", lambda ctx: notebook_fn(ctx, "<stdin>"), ValueError,
     "(or a script read from stdin)"),
    ("run_distributed of nothing", lambda ctx: run_distributed([]), TypeError,
     "jobs must be a Job or a non-empty list of Jobs"),
    ("run_distributed mixed stages", lambda ctx: run_distributed([job(), job(Plan.greedy(3))]),
     ValueError, "all jobs must have the same number of stages"),
    ("Options window zero", lambda ctx: Options(window=0), ValueError,
     "window must be an int >= 1, got 0"),
    ("Options timeout zero", lambda ctx: Options(timeout=0), ValueError,
     "timeout must be seconds > 0, got 0"),
    ("Options unknown backend", lambda ctx: Options("mpi"), ValueError,
     "backend must be 'auto', 'gloo' or 'nccl', got 'mpi'"),
    ("Options threads zero", lambda ctx: Options(threads=0), ValueError,
     "threads must be None or an int >= 1"),
    ("Options unknown rank order", lambda ctx: Options(order="stage-major"), ValueError,
     "order must be 'replicas-together' (a stage's replicas on consecutive ranks), "
     "'stages-together'"),
    ("run_distributed options and keywords", lambda ctx: run_distributed(
        job(), timeout=5, options=Options(replicas=2)), ValueError,
     "either as options=Options(...) or as keywords, not both: got options and timeout"),
    ("run_pipeline options and keywords", lambda ctx: run_pipeline(
        job(), replicas=2, options=Options()), ValueError, "not both: got options and replicas"),
    ("run_distributed options of another type", lambda ctx: run_distributed(
        job(), options={"replicas": 2}), TypeError, "options must be a minilocal.runtime.Options, got dict"),
    ("run_distributed unknown rank order", lambda ctx: run_distributed(job(), replicas=2,
                                                                        order="nodes"),
     ValueError, "or 'auto' (by bytes per step), got 'nodes'"),
    ("Layout order auto unresolved", lambda ctx: Layout(2, 2, "auto"), ValueError,
     "resolve 'auto' with resolve_order first"),
    ("Layout rank outside the mesh", lambda ctx: Layout(2, 2).where(4), ValueError,
     "rank 4 is outside 0..3"),
    ("cli rank order with sequential", cli("--runner", "sequential", "--rank-order", "auto"),
     CliError, "--rank-order applies to --runner distributed"),
    ("cli unknown rank order", cli("--rank-order", "nodes"), CliError,
     "argument --rank-order: invalid choice: 'nodes'"),
    ("dry run of a bf16 job", lambda ctx: bf16_job.build().check_batch(*bf16_job.batches(0)),
     TypeError, "stage 0 expects bfloat16 input, got float32"),
    ("sequential runner, delayed job", lambda ctx: run_sequential(job(
        plan=Plan.overlapping(2), delay=1)), ValueError, "the sequential runner is synchronous"),
    ("simulate zero capacity", lambda ctx: simulate(job(), [1, 1], capacity=0), ValueError,
     "capacity must be an int >= 1"),
    ("simulate costs per stage", lambda ctx: simulate(job(), [1, 1, 1]), ValueError,
     "costs must be 2 finite seconds"),
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """One checkpoint of a 2-step greedy run on toy(), batch 16, seed 0."""
    path = tmp_path_factory.mktemp("ckpt") / "run.pt"
    fit(net(), toy(), steps=2, batch_size=16, checkpoint=path, progress=False)
    return path


def test_the_table_is_large_and_its_names_unique():
    names = [c[0] for c in CASES]
    assert len(names) == len(set(names)) and len(names) >= 100


@pytest.mark.parametrize("name, action, error, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, action, error, fragment, tmp_path, checkpoint, monkeypatch):
    with pytest.raises(error, match=re.escape(fragment)):
        action(Ctx(tmp_path, checkpoint, monkeypatch))
    assert not (tmp_path / "ran").exists()  # a crafted file never runs its code
