"""benchmarks/gpu_check.py where there is no CUDA: every part is reported, the GPU parts are skipped
(never passed) with the reason, the exit code is 0; and its pure helpers: the lab patcher, the
failure rule, the report's GPU tables and the pinned versions of the wheels that travel."""
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = "skipped: no CUDA device (torch.cuda.is_available() is False)"
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
_spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)
parts, wheels = gpu_check.parts, gpu_check.wheels


def test_cpu_run_reports_every_part_and_skips_every_gpu_part(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # no GPU, also on a machine that has one
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--quick"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["gpu"] is False and list(report["parts"]) == list(gpu_check.PARTS)
    for name, (needs_gpu, _, _) in gpu_check.PARTS.items():
        part = report["parts"][name]
        if needs_gpu:
            assert part == {"status": NO_CUDA}
        else:
            assert part["status"] == "pass", part
    mem = report["parts"]["activation_memory_cpu"]["result"]
    assert {"backprop", "greedy", "overlapping", "chunked(2)"} <= set(mem["mib"])
    assert mem["x_backprop"]["greedy"] < 0.5  # one stage of activations at a time
    text = (tmp_path / "gpu_check.txt").read_text()
    assert "NOTHING RAN ON A GPU" in text and "passed: activation_memory_cpu\n" in text
    gpu_lines = [line for line in text.splitlines() if line.split(" ")[0] in gpu_check.PARTS
                 and gpu_check.PARTS[line.split(" ")[0]][0]]
    assert len(gpu_lines) == sum(p[0] for p in gpu_check.PARTS.values())
    assert all(line.rstrip().endswith("is False)") for line in gpu_lines)


def test_every_part_has_a_function_and_a_limit():
    assert set(gpu_check.PARTS) == set(parts.PART_FNS)
    assert all(0 < limit <= 300 for _, limit, _ in gpu_check.PARTS.values())


def test_the_lab_patches_apply_to_the_labs_and_still_compile():
    for name, patches in parts.LAB_PATCHES.items():
        nb = nbformat.read(ROOT / "solutions" / "labs" / f"{name}.ipynb", as_version=4)
        before = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert parts.patch_notebook(nb, patches, name) == [new for _, new in patches]
        code = [c.source for c in nb.cells if c.cell_type == "code"]
        for old, new in patches:
            assert old not in "\n".join(code)
            assert "\n".join(code).count(new) == before.count(new) + 1
        for source in code:
            compile("\n".join(l for l in source.split("\n") if not l.lstrip().startswith("%")),
                    name, "exec")


def test_the_patcher_refuses_a_missing_or_repeated_target():
    nb = new_notebook(cells=[new_code_cell("steps = 200\nsteps = 200"), new_code_cell("K = 8")])
    with pytest.raises(ValueError, match=r"lab9: the patch target 'width = 4096' occurs 0 times"):
        parts.patch_notebook(nb, [("width = 4096", "width = 64")], "lab9")
    with pytest.raises(ValueError, match=r"'steps = 200' occurs 2 times .* expected once"):
        parts.patch_notebook(nb, [("steps = 200", "steps = 2")], "lab9")
    parts.patch_notebook(nb, [("K = 8", "K = 2")], "lab9")
    assert nb.cells[1].source == "K = 2"


def test_failures_are_failed_timed_out_or_not_run_parts_never_skipped_ones():
    statuses = {"a": "pass", "b": gpu_check.NO_CUDA, "c": "not requested (--only)",
                "d": "fail: pytest exit code 1", "e": "timeout: no result within 60 s",
                "f": "not run: the time budget (--budget 420 s) was spent"}
    report = {"parts": {n: {"status": s} for n, s in statuses.items()}}
    assert gpu_check.failures(report) == ["d", "e", "f"]


def test_the_report_prints_the_gpu_tables():
    env = dict(started="now", host="h", torch="2.11.0", torch_cuda="13.0", python="3.12.3",
               gpu="NVIDIA H200", gpu_count=1, gpu_memory_gib=139.8, capability="9.0", nccl="2.27")
    mem = {"model": "mlp", "batch": 1024, "mib": {"backprop": 8.0, "greedy": 2.0},
           "x_backprop": {"backprop": 1.0, "greedy": 0.25}}
    speed = dict(model="mlp 8x1024", batch=256, method="greedy", examples_per_s=1e5, step_ms=2.56,
                 spread=0.03)
    k2 = dict(K=2, one_process_ms=4.0, processes_ms=8.0, speedup=0.5, backend="gloo", staging=True,
              max_loss_diff=0.0)
    done = {"activation_memory_cpu": {"status": "pass", "result": mem},
            "activation_memory_cuda": {"status": "pass", "result": mem},
            "throughput": {"status": "pass",
                           "result": {"repeats": 5, "steps_per_repeat": 10, "rows": [speed]}},
            "processes": {"status": "fail: K = [4]", "result": {
                "model": "mlp", "batch": 1024, "steps": 100, "one_rank_backend": "nccl",
                "rows": [k2]}}}
    text = gpu_check.summary({"environment": env, "gpu": True, "parts": done})
    assert "GPU: NVIDIA H200 x1" in text and "NOTHING RAN" not in text
    assert re.search(r"\ngreedy +2\.00 +0\.25 +2\.00 +0\.25\n", text)
    assert "100,000" in text and "spread 3%" in text
    assert "K=2: 4.00 vs 8.00 ms/step, speed-up 0.50x (gloo, host staging True, " in text
    assert text.rstrip().endswith("FAILED: processes (details in gpu_check.json, output in "
                                  "gpu_check.log)")


def test_the_carried_wheels_are_pinned_for_python_3_12(tmp_path):
    pins = wheels.pinned(wheels.CARRIED)
    assert set(pins) == set(wheels.CARRIED) and pins["ipython"].startswith("9.")
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("foo==1.0 ; python_full_version < '3.12'\n"
                           "foo==2.0 ; python_full_version >= '3.12'\n")
    assert wheels.pinned(["foo"], constraints) == {"foo": "2.0"}
    with pytest.raises(ValueError, match=r"pins no version of \['bar'\] for Python 3.12"):
        wheels.pinned(["bar"], constraints)
