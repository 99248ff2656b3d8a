"""The GPU labs: the one scale switch, the full-run commands, and the full-mode code paths that the
tiny CPU run (covered by nbval) never reaches: lab 1's GPU requirement and lab 2's CIFAR-10 run."""
import math
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

LABS = Path(__file__).resolve().parents[1] / "solutions" / "labs"
NAMES = ["lab1_scaling", "lab2_pareto", "lab3_language_model"]


def code_cells(name):
    """A lab's code cells, without IPython magics."""
    nb = nbformat.read(LABS / f"{name}.ipynb", as_version=4)
    return ["\n".join(l for l in c.source.split("\n") if not l.lstrip().startswith("%"))
            for c in nb.cells if c.cell_type == "code"]


def run_cells(name, sources, monkeypatch, scale=None):
    """Exec ``sources`` of lab ``name`` in one namespace, as the notebook would (cwd = its folder)."""
    monkeypatch.chdir(LABS)
    if scale is None:
        monkeypatch.delenv("MINILOCAL_SCALE", raising=False)
    else:
        monkeypatch.setenv("MINILOCAL_SCALE", scale)
    namespace = {"__name__": "__notebook__"}
    for source in sources:
        exec(compile(source, f"{name}.ipynb", "exec"), namespace)
    return namespace


def cell_with(name, text):
    return next(s for s in code_cells(name) if text in s)


@pytest.mark.parametrize("name", NAMES)
def test_every_lab_documents_the_switch_and_a_full_run_command(name):
    nb = nbformat.read(LABS / f"{name}.ipynb", as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "MINILOCAL_SCALE=full" in text
    assert "torchrun --standalone --nproc-per-node=" in text and "-m minilocal" in text
    setup = code_cells(name)[0]
    assert 'os.environ.get("MINILOCAL_SCALE", "tiny")' in setup


@pytest.mark.parametrize("name", NAMES)
def test_an_unknown_scale_is_refused_with_the_value_and_the_choices(name, monkeypatch):
    with pytest.raises(ValueError, match=r"MINILOCAL_SCALE must be 'tiny' or 'full', got 'huge'"):
        run_cells(name, code_cells(name)[:1], monkeypatch, scale="huge")


@pytest.mark.parametrize("n_gpus", [0, 1])
def test_lab1_full_mode_needs_two_gpus_and_says_so(n_gpus, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n_gpus)
    setup, config = code_cells("lab1_scaling")[0], cell_with("lab1_scaling", 'if SCALE == "full":')
    with pytest.raises(RuntimeError, match=rf"needs at least 2 GPUs, found {n_gpus}"):
        run_cells("lab1_scaling", [setup, config], monkeypatch, scale="full")


def test_lab1_full_mode_takes_one_stage_per_gpu_up_to_eight(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 12)
    setup, config = code_cells("lab1_scaling")[0], cell_with("lab1_scaling", 'if SCALE == "full":')
    ns = run_cells("lab1_scaling", [setup, config], monkeypatch, scale="full")
    assert ns["K"] == 8 and ns["device"].type == "cuda"
    assert ns["config"]["batch"] % ns["config"]["microbatches"] == 0  # the pipelines need it


@pytest.mark.parametrize("n_gpus, N", [(12, 8), (8, 8), (7, 4), (4, 4), (3, 2), (2, 2)])
def test_lab1_splits_n_devices_one_process_per_gpu(n_gpus, N, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n_gpus)
    setup, config = code_cells("lab1_scaling")[0], cell_with("lab1_scaling", 'if SCALE == "full":')
    ns = run_cells("lab1_scaling", [setup, config], monkeypatch, scale="full")
    assert ns["N"] == N
    for D in range(1, N + 1):  # every split's shard, and GPipe x DP's microbatches on it, are whole
        if N % D == 0:
            assert ns["config"]["batch"] % D == 0 and (ns["config"]["batch"] // D) % ns["config"]["microbatches"] == 0
    assert run_cells("lab1_scaling", [setup, config], monkeypatch)["N"] == 4  # tiny: 4 CPU processes


def cifar_record(monkeypatch, device):
    """Lab 2's run_cifar on fake CIFAR-shaped data (a tiny ResNet, two steps)."""
    lab = "lab2_pareto"
    ns = run_cells(lab, [code_cells(lab)[0], cell_with(lab, "def run_cifar(")], monkeypatch)
    rng = np.random.default_rng(0)
    ns["cifar"] = {"x": rng.standard_normal((300, 3, 32, 32), dtype=np.float32),
                   "y": rng.integers(0, 10, 300)}
    ns["PROBE"] = 200  # the loss is measured on the first 200 images (not a multiple of the chunk of 500)
    config = ns["sweep_configs"](["chunked2"], [8], [1e-3], dataset="cifar10", model="resnet2d",
                                 n_blocks=4, width=4, max_steps=2, stop_loss=0.01, eval_ratio=1.5,
                                 device=device)[0]
    return ns, config, ns["run_cifar"](config)


def check_cifar_record(ns, config, record):
    assert record["steps"] == [0, 1, 2] and len(record["loss"]) == 3
    assert all(math.isfinite(v) for v in record["loss"])
    # the step-0 loss is the untrained net's mean cross-entropy on the probe, computed here in one pass
    # from an independently built copy (same recipe and seed), not in the lab's chunks of 500
    plan = ns["make_plan"](config["method"], config["n_blocks"])
    torch.manual_seed(config["seed"])
    blocks, heads = ns["models"].resnet2d(plan, channels=config["width"], seed=config["seed"])
    net = ns["LocalNet"](blocks, heads, plan).to(torch.device(config["device"])).eval()
    x = torch.from_numpy(ns["cifar"]["x"][:ns["PROBE"]]).to(config["device"])
    y = torch.from_numpy(ns["cifar"]["y"][:ns["PROBE"]]).to(config["device"])
    with torch.no_grad():
        want = float(torch.nn.functional.cross_entropy(net(x), y))
    assert record["loss"][0] == pytest.approx(want, rel=1e-5)
    assert len(record["stage_flops"]) == record["n_stages"] == 2 and min(record["stage_flops"]) > 0
    assert record["reached"] is None and record["diverged"] is False
    row = ns["pareto"].frontier({"run": record}, target=10.0)[0]  # every run reaches a loose target at step 0
    assert row["method"] == "chunked2" and row["steps"] == 0 and row["time"] == 0.0


def test_lab2_cifar_run_gives_a_record_the_pareto_functions_accept(monkeypatch):
    check_cifar_record(*cifar_record(monkeypatch, "cpu"))


@pytest.mark.gpu
def test_lab2_cifar_run_on_cuda(monkeypatch):
    check_cifar_record(*cifar_record(monkeypatch, "cuda"))
