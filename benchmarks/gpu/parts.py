"""The GPU check's parts: each ``fn(quick) -> result dict`` runs in its own process (see
benchmarks/gpu_check.py, which schedules them); ``Failed`` carries what a failing part measured.

The labs run in a reduced full mode: LAB_PATCHES edits their source in memory (the files are not
touched), and ``patch_notebook`` refuses a lab whose patch target is missing or ambiguous.
"""
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "benchmarks"))  # activation_memory, sweep_mnist1d

# Full mode, reduced to fit the budget: (old, new) source replacements; each old text must occur
# exactly once in the lab's code cells (see patch_notebook).
LAB_PATCHES = {
    "lab1_scaling": [  # one GPU: the K = 2 stages share it (host staging); a narrower, shorter run
        ("torch.cuda.device_count() < 2", "torch.cuda.device_count() < 1"),
        ("K = min(torch.cuda.device_count(), 8)", "K = 2"),
        ("dict(d_in=512, width=4096, batch=1024, steps=200, microbatches=8, examples=16384)",
         "dict(d_in=512, width=1024, batch=1024, steps=20, microbatches=8, examples=4096)")],
    "lab2_pareto": [  # MNIST-1D grid: 2 batch sizes, 1 learning rate, 300 steps, a reachable target
        ("batch_sizes=[16, 32, 64, 128, 256, 512, 1024, 2048, 4000], "
         "lrs=[3e-4, 1e-3, 3e-3, 1e-2, 3e-2]", "batch_sizes=[256, 4000], lrs=[3e-3]"),
        ('max_steps=20000, stop_loss=0.05, device="cuda"',
         'max_steps=300, stop_loss=0.05, device="cuda"'),
        ('TARGET, folder = 0.1, "../../results"',
         'TARGET, folder = 1.0, tempfile.mkdtemp(prefix="lab2_")')],
    "lab3_language_model": [  # 200 steps; the 4 stages share the GPU instead of being skipped
        ("n_lines=200_000", "n_lines=50_000"), ("steps=5000,", "steps=200,"),
        ("eval_every=250", "eval_every=50"),
        ("enough_gpus = torch.cuda.device_count() >= K", "enough_gpus = True")],
}
PROBE = ("import json, torch\nprint('gpu_check probe', json.dumps({'cuda_max_allocated_mib': "
         "torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0}))")


class Failed(Exception):
    """A part ran and found something wrong; ``result`` keeps what it measured."""

    def __init__(self, message, result):
        super().__init__(message)
        self.result = result


# --- the parts (each runs in its own process: ``--part NAME``) -------------------------------
def activation_memory(quick, device):
    import activation_memory as am  # benchmarks/activation_memory.py
    import torch

    torch.set_num_threads(1)
    batch = 256 if quick else 1024
    peaks = am.measure(n_blocks=8, width=256, batch=batch, device=device)
    what = "bytes saved for backward" if device == "cpu" else "max_memory_allocated - before"
    return {"model": "mlp, 8 blocks, width 256", "batch": batch, "measure": what,
            "mib": {m: v / 2**20 for m, v in peaks.items()},
            "x_backprop": {m: v / peaks["backprop"] for m, v in peaks.items()}}


def plans(n_blocks):
    from minilocal import Plan

    return {"backprop": Plan.backprop(n_blocks), "greedy": Plan.greedy(n_blocks),
            "overlapping": Plan.overlapping(n_blocks), "chunked(2)": Plan.chunked(n_blocks, 2)}


def throughput(quick):
    import torch
    from minilocal import LocalNet, models

    builders = {"mlp 8x1024": lambda p: models.mlp(p, width=1024),
                "resnet1d 8x32": lambda p: models.resnet1d(p, channels=32)}
    steps, repeats = (2, 2) if quick else (10, 5)
    rows = []
    for model, build in builders.items():
        for batch in ([256] if quick else [256, 4096]):
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(batch, 40, generator=gen).cuda()          # (B, 40)
            y = torch.randint(0, 10, (batch,), generator=gen).cuda()  # (B,)
            for method, plan in plans(8).items():
                net = LocalNet(*build(plan), plan, devices="cuda")
                for _ in range(3):  # warm-up: kernels chosen, optimizer state allocated
                    net.train_step(x, y)
                times = []
                for _ in range(repeats):
                    torch.cuda.synchronize()
                    start = time.perf_counter()
                    for _ in range(steps):
                        net.train_step(x, y)
                    torch.cuda.synchronize()
                    times.append((time.perf_counter() - start) / steps)
                mid = statistics.median(times)
                rows.append(dict(model=model, batch=batch, method=method,
                                 examples_per_s=batch / mid, step_ms=1e3 * mid,
                                 spread=(max(times) - min(times)) / mid))
                print(f"  {model} batch {batch} {method}: {batch / mid:,.0f} examples/s",
                      flush=True)
    return {"steps_per_repeat": steps, "repeats": repeats, "rows": rows}


def one_process(job):
    """Seconds per step of ``job`` on the GPU in this process, and its losses."""
    import torch

    warm = job.build(devices="cuda")
    for t in range(2):  # this process's CUDA context and kernels, as each worker builds its own
        warm.train_step(*job.batches(t))
    net = job.build(devices="cuda")
    torch.cuda.synchronize()
    start = time.perf_counter()
    losses = [net.train_step(*job.batches(t)) for t in range(job.n_steps)]
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / job.n_steps, losses


def processes(quick):
    from minilocal import Plan, models
    from minilocal.runtime import Job, ModelSpec, RandomBatches, run_distributed

    spec, n_steps = ModelSpec(models.mlp, {"width": 1024}), 10 if quick else 100
    rows, errors = [], []
    result = {"model": "mlp, 8 blocks, width 1024; Plan.chunked(8, K)", "batch": 1024,
              "steps": n_steps, "rows": rows, "one_rank_backend": None}
    for K in (2, 4):
        job = Job(spec, Plan.chunked(8, K), RandomBatches(1024), n_steps=n_steps)
        try:
            one, losses = one_process(job)
            run = run_distributed(job, timeout=120)
        except Exception as e:  # noqa: BLE001 - the other K and the one-rank run still go
            errors.append(f"K={K}: {type(e).__name__}: {e}")
            continue
        many = run.wall / n_steps
        diff = max(abs(a - b) for u, v in zip(losses, run.history["train_loss"])
                   for a, b in zip(u, v))
        rows.append(dict(K=K, one_process_ms=1e3 * one, processes_ms=1e3 * many,
                         speedup=one / many, max_loss_diff=diff, backend=run.stats[0]["backend"],
                         staging=run.stats[0]["staging"], devices=[s["device"] for s in run.stats],
                         recv_wait_s=[round(s["recv_wait_s"], 3) for s in run.stats]))
        print(f"  K={K}: one process {1e3 * one:.2f} ms/step, {K} processes "
              f"{1e3 * many:.2f} ms/step", flush=True)
        if diff > 1e-4:
            errors.append(f"K={K}: the processes' losses differ from one process's by {diff:.1e}")
    try:  # one process, one GPU: the only NCCL run one GPU allows (NCCL refuses two ranks on it)
        single = run_distributed(Job(spec, Plan.backprop(8), RandomBatches(1024), n_steps=n_steps))
        result["one_rank_backend"] = single.stats[0]["backend"]
    except Exception as e:  # noqa: BLE001
        errors.append(f"one rank: {type(e).__name__}: {e}")
    if errors:
        raise Failed("; ".join(errors), result)
    return result


def sweep_lab(quick):
    import sweep_mnist1d as sm  # benchmarks/sweep_mnist1d.py: its lab scale, fewer runs and steps

    lab, steps, folder = sm.SCALES["lab"], 20 if quick else 200, Path(tempfile.mkdtemp())
    settings = dict(lab["settings"], max_steps=steps)
    configs = sm.sweep_configs(lab["methods"], [256, 4000], [3e-3], device="cuda", **settings)
    runs = sm.sweep(configs, folder / "sweep.json", progress=False)
    sim = [dict(sm.DEFAULTS, **lab["settings"], device="cuda", method="overlapping", batch=64,
                lr=1e-3, steps=steps, every=steps // 2, kind="similarity")]
    cosine = sm.sweep(sim, folder / "similarity.json", run=sm.similarity_run, progress=False)
    return {"settings": settings, "cosine_last": [r["cosine"][-1] for r in cosine.values()],
            "runs": [dict(method=r["config"]["method"], batch=r["config"]["batch"],
                          loss=r["loss"][-1], steps=r["steps"][-1], wall_s=r["wall_s"])
                     for r in runs.values()]}


def run_pytest(args):
    import xml.etree.ElementTree as ET

    xml = Path(tempfile.mkdtemp()) / "junit.xml"
    rc = subprocess.call([sys.executable, "-m", "pytest", *args, "-q", "-rfEs", "--timeout=150",
                          f"--junitxml={xml}"], cwd=ROOT)
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    result = dict(counts, args=args, failed=failed)
    if rc != 0 or counts["tests"] == 0 or counts["skipped"]:
        raise Failed(f"pytest exit code {rc}: {counts} (a skip on a CUDA machine is no pass); "
                     f"failed: {failed}", result)
    return result


def patch_notebook(nb, patches, name):
    """Apply (old, new) replacements to the code cells of ``nb`` in place; returns the new texts.
    Raises ValueError when an old text is missing or occurs more than once."""
    for old, new in patches:
        count = sum(c.source.count(old) for c in nb.cells if c.cell_type == "code")
        if count != 1:
            raise ValueError(f"{name}: the patch target {old!r} occurs {count} times in the code "
                             f"cells, expected once; update LAB_PATCHES in benchmarks/gpu/parts.py")
        cell = next(c for c in nb.cells if c.cell_type == "code" and old in c.source)
        cell.source = cell.source.replace(old, new)
    return [new for _, new in patches]


def run_notebook(path, patches=(), env=(), expect_cuda=True, limit=300):
    """Execute a notebook with nbclient (its folder as cwd) and a probe cell for CUDA memory."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    applied = patch_notebook(nb, patches, path.stem)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    os.environ.pop("MINILOCAL_SCALE", None)  # notebook 07 reads it too, as an integer
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=limit, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        for cell in nb.cells:  # what the notebook printed goes to this part's log
            for out in cell.get("outputs", []):
                print(out.get("text", ""), end="")
    probe = nb.cells[-1].outputs[0]["text"].split("gpu_check probe", 1)[1]
    result = dict(json.loads(probe), notebook=str(path.relative_to(ROOT)), patched=applied,
                  env=dict(env))
    if not result["cuda_max_allocated_mib"] > 0:
        if expect_cuda:
            raise Failed("the notebook ran but its kernel allocated no CUDA memory", result)
        result["note"] = "ran on the CPU: this notebook has no CUDA path (its kernel used no GPU)"
    return result


def lab(name):
    return lambda quick: run_notebook(ROOT / "solutions" / "labs" / f"{name}.ipynb",
                                      LAB_PATCHES[name], {"MINILOCAL_SCALE": "full"})


PART_FNS = {
    "activation_memory_cpu": lambda quick: activation_memory(quick, "cpu"),
    "activation_memory_cuda": lambda quick: activation_memory(quick, "cuda"),
    "throughput": throughput, "processes": processes, "sweep_lab": sweep_lab,
    "pytest_gpu": lambda quick: run_pytest(["-m", "gpu", "tests"]),
    "pytest_devices": lambda quick: run_pytest(
        ["tests/test_distributed.py", "tests/test_local.py", "tests/test_train.py", "-m", "not gpu",
         "-k", "test_distributed or device or cuda or nccl"]),
    "nb06": lambda quick: run_notebook(ROOT / "solutions" / "06_numpy_to_torch.ipynb"),
    "nb07": lambda quick: run_notebook(ROOT / "solutions" / "07_vision_and_language.ipynb",
                                       expect_cuda=False),
    "lab1_full": lab("lab1_scaling"), "lab2_full": lab("lab2_pareto"),
    "lab3_full": lab("lab3_language_model"),
}


def run_part_here(name, result_path, quick):
    """The body of ``--part NAME``: run it, write {status, result, error} as JSON."""
    try:
        out = {"status": "pass", "result": PART_FNS[name](quick)}
    except Failed as e:
        out = {"status": f"fail: {e}", "error": str(e), "result": e.result}
    except BaseException as e:  # noqa: BLE001 - every failure must reach the report
        what = f"{e.ename}: {e.evalue}" if hasattr(e, "ename") else f"{type(e).__name__}: {e}"
        out = {"status": f"fail: {what}", "error": traceback.format_exc()}
    out["status"] = " ".join(out["status"].split())[:240]  # one line
    out["error"] = re.sub(r"\x1b\[[0-9;]*m", "", out.get("error", ""))  # a cell's colours
    Path(result_path).write_text(json.dumps(out, indent=1, default=str))
    return 0
