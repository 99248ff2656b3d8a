"""One prepared GPU check: the CUDA tests, memory, throughput, processes and the labs' full mode.

Writes gpu_check.json, gpu_check.txt (the short report) and gpu_check.log (every part's output) to
OUT. Each part runs in its own process under its own time limit: a failure or a hang is recorded and
the other parts go on. Parts that time things run alone, one after another; the others (tests,
notebooks, labs) then run side by side (--jobs). Exit code 1 if any part failed, timed out or was
left out for lack of time. Without CUDA every GPU part is reported "skipped: no CUDA device ...",
the CPU parts still run, the report says that nothing ran on a GPU, and the exit code is 0.

    .venv/bin/python benchmarks/gpu_check.py runs/gpu-check --quick  # here: the CPU parts, ~10 s
    .venv/bin/python benchmarks/gpu_check.py --prepare-wheels benchmarks/gpu/build/wheels

The GPU machine's python3 has torch but not the pure-Python packages in gpu/wheels.py: they travel
as wheels in benchmarks/gpu/build/wheels (ignored through .gitignore's build/, so the run names it
in carry); the project travels with the working tree. There, with carry
["benchmarks/gpu/build/wheels"] and a time limit of 420 s (the default --budget of 360 s, the
install and the report; a typical run takes about 4 minutes), as one line:

    set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir
    --target /tmp/site benchmarks/gpu/build/wheels/*.whl && export PYTHONPATH=/tmp/site:$PWD &&
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py "$OUT" 2>&1 | tee "$OUT/console.log"

A rerun of some parts only: add --only lab2_full,nb06 (and a smaller --budget).
"""
import argparse
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # this working tree's minilocal, also where another is installed
sys.path.append(str(HERE / "gpu"))
import parts  # noqa: E402  (benchmarks/gpu/parts.py: what each part does)
import wheels  # noqa: E402  (benchmarks/gpu/wheels.py: the packages that travel)

NO_CUDA = "skipped: no CUDA device (torch.cuda.is_available() is False)"

# name: (needs a GPU, time limit in s, runs alone). Alone: it times something.
PARTS = {
    "activation_memory_cpu": (False, 60, True), "activation_memory_cuda": (True, 60, True),
    "throughput": (True, 120, True), "processes": (True, 150, True),
    "nb07": (True, 240, False), "lab3_full": (True, 200, False),  # the longest side parts first
    "pytest_devices": (True, 180, False), "lab2_full": (True, 180, False),
    "lab1_full": (True, 180, False), "pytest_gpu": (True, 150, False),
    "nb06": (True, 150, False), "sweep_lab": (True, 150, False),
}


# --- the driver --------------------------------------------------------------------------------
def child_env():
    """This environment, with PYTHONPATH absolute and the repo first (kernels start elsewhere)."""
    given = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + given), PYTHONUNBUFFERED="1",
                MPLBACKEND="Agg")


def run_child(name, limit, quick, work):
    """Run one part in a new process session; kill the whole session at ``limit`` seconds."""
    result, log = work / f"{name}.json", work / f"{name}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--result", str(result)]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd + ["--quick"] * quick, stdout=f, stderr=subprocess.STDOUT,
                                cwd=ROOT, env=child_env(), start_new_session=True)
        try:
            rc, killed = proc.wait(timeout=limit), False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc, killed = proc.wait(), True
    if result.exists():  # a part killed while it exited (a kernel's shutdown, say) still counts
        return dict(json.loads(result.read_text()), killed_at_limit=killed)
    if killed:
        return {"status": f"timeout: no result within its limit of {limit:.0f} s (killed)"}
    return {"status": f"fail: its process exited with code {rc} and wrote no result"}


def environment(cuda):
    import importlib.metadata as md
    import platform

    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "cuda_available": cuda, "host": platform.node(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for name in ("numpy", "nbclient", "ipykernel", "nbval", "mnist1d"):
        try:
            info[name] = md.version(name)
        except md.PackageNotFoundError:
            info[name] = None
    if cuda:
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_count=torch.cuda.device_count(),
                    gpu_memory_gib=round(p.total_memory / 2**30, 1),
                    capability=f"{p.major}.{p.minor}", cudnn=torch.backends.cudnn.version(),
                    nccl=str(torch.cuda.nccl.version()))
        if shutil.which("nvidia-smi"):
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            smi = subprocess.run(query, capture_output=True, text=True, check=False)
            info["driver"] = smi.stdout.strip() or None
    return info


def check(out, quick, budget, jobs, only):
    import torch

    cuda, start = torch.cuda.is_available(), time.monotonic()
    report = {"environment": environment(cuda), "gpu": cuda, "quick": quick, "budget_s": budget,
              "parts": {}}
    print("environment: " + json.dumps(report["environment"]), flush=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))

    def run(name):
        left = budget - (time.monotonic() - start) - 10  # 10 s kept for the report
        if only and name not in only:
            return {"status": "not requested (--only)"}
        if PARTS[name][0] and not cuda:
            return {"status": NO_CUDA}
        if left < 20:
            return {"status": f"not run: the time budget (--budget {budget} s) was spent"}
        limit = min(PARTS[name][1], left)
        print(f"[{time.monotonic() - start:5.0f} s] {name}: start, limit {limit:.0f} s", flush=True)
        t0 = time.monotonic()
        try:
            part = run_child(name, limit, quick, work)
        except Exception as e:  # noqa: BLE001 - the other parts still run
            part = {"status": f"fail: could not run the part: {type(e).__name__}: {e}"}
        part.update(wall_s=round(time.monotonic() - t0, 1), limit_s=round(limit))
        print(f"[{time.monotonic() - start:5.0f} s] {name}: {part['status'][:120]} "
              f"({part['wall_s']} s)", flush=True)
        return part

    alone = [n for n in PARTS if PARTS[n][2]]
    for name in alone:
        report["parts"][name] = run(name)
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        side = [n for n in PARTS if not PARTS[n][2]]
        for name, part in zip(side, pool.map(run, side)):
            report["parts"][name] = part
    report["wall_s"] = round(time.monotonic() - start, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    logs = [(n, work / f"{n}.log") for n in PARTS if (work / f"{n}.log").exists()]
    (out / "gpu_check.log").write_text("".join(f"===== {n}\n{log.read_text()}\n"
                                               for n, log in logs))
    text = summary(report)
    (out / "gpu_check.txt").write_text(text)
    print("\n" + text, flush=True)
    return 1 if failures(report) else 0


def failures(report):
    """Parts that failed, timed out or did not run for lack of time (a skip is no failure)."""
    return [n for n, p in report["parts"].items()
            if p["status"].split(":")[0] in ("fail", "timeout", "not run")]


def summary(report):
    """The short text report."""
    env, done = report["environment"], report["parts"]
    lines = [f"minilocal GPU check, {env['started']} on {env['host']}: torch {env['torch']} "
             f"(CUDA {env['torch_cuda']}), Python {env['python']}"]
    if report["gpu"]:
        lines.append(f"GPU: {env['gpu']} x{env['gpu_count']}, {env['gpu_memory_gib']} GiB, "
                     f"capability {env['capability']}, NCCL {env['nccl']}, "
                     f"driver {env.get('driver')}")
    else:
        lines.append("NOTHING RAN ON A GPU: torch.cuda.is_available() is False on this machine. "
                     "Every GPU part below is skipped, and a skipped part is not a pass.")
    lines += ["", f"{'part':24s} {'wall s':>7s} {'limit':>6s}  status"]
    for name, p in done.items():
        wall, limit = p.get("wall_s", "-"), p.get("limit_s", "-")
        lines.append(f"{name:24s} {wall:>7} {limit:>6}  {p['status'][:90]}")
        r = p.get("result") or {}
        notes = [r.get("note"), p.get("killed_at_limit") and "killed at its limit, after writing"]
        if "tests" in r:
            notes.append(f"{r['tests']} tests: {r['failures']} failed, {r['errors']} errors, "
                         f"{r['skipped']} skipped")
        if "patched" in r:
            notes.append(f"its kernel's CUDA peak: {r['cuda_max_allocated_mib']:.0f} MiB"
                         + (f"; {len(r['patched'])} source lines patched" if r["patched"] else ""))
        lines += [f"{'':26s}{note}" for note in notes if note]
    mem = {k: (done.get(f"activation_memory_{k}", {}).get("result") or {}) for k in ("cpu", "cuda")}
    if mem["cpu"] or mem["cuda"]:
        first = mem["cpu"] or mem["cuda"]
        lines += ["", f"activation memory, one train_step, {first['model']}, batch {first['batch']}"
                      f" (MiB; CPU: saved for backward, CUDA: max_memory_allocated - before)",
                  f"{'method':12s} {'CPU MiB':>9s} {'x bp':>6s} {'CUDA MiB':>9s} {'x bp':>6s}"]
        for m in first["mib"]:
            cells = [f"{r['mib'][m]:9.2f} {r['x_backprop'][m]:6.2f}" if r else f"{'-':>9} {'-':>6}"
                     for r in (mem["cpu"], mem["cuda"])]
            lines.append(f"{m:12s} " + " ".join(cells))
    tp = done.get("throughput", {}).get("result")
    if tp:
        lines += ["", f"LocalNet.train_step on CUDA, examples/s (median of {tp['repeats']} repeats "
                      f"of {tp['steps_per_repeat']} steps; spread = (max - min) / median)"]
        for r in tp["rows"]:
            lines.append(f"  {r['model']:14s} batch {r['batch']:5d} {r['method']:12s} "
                         f"{r['examples_per_s']:12,.0f}  {r['step_ms']:8.2f} ms  "
                         f"spread {r['spread']:.0%}")
    pr = done.get("processes", {}).get("result")
    if pr:
        lines += ["", f"K processes sharing the GPU vs one process ({pr['model']}, batch "
                      f"{pr['batch']}, {pr['steps']} steps); speed-up = one process's time / K's"]
        for r in pr["rows"]:
            lines.append(f"  K={r['K']}: {r['one_process_ms']:.2f} vs {r['processes_ms']:.2f} "
                         f"ms/step, speed-up {r['speedup']:.2f}x ({r['backend']}, host staging "
                         f"{r['staging']}, max loss difference {r['max_loss_diff']:.1e})")
        lines.append(f"  one rank (Plan.backprop): backend {pr['one_rank_backend']}")
    bad = failures(report)
    passed = ", ".join(n for n, p in done.items() if p["status"] == "pass") or "none"
    lines.append("\n" + (f"FAILED: {', '.join(bad)} (details in gpu_check.json, output in "
                         f"gpu_check.log)" if bad else f"no failures; passed: {passed}"))
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="runs/gpu-check", type=Path,
                        help="report folder (default runs/gpu-check, ignored by git)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer steps")
    parser.add_argument("--budget", type=float, default=360, help="seconds for all parts")
    parser.add_argument("--jobs", type=int, default=4, help="parts run side by side (not timings)")
    parser.add_argument("--only", default="", help="comma-separated parts to run")
    parser.add_argument("--prepare-wheels", type=Path, metavar="DIR")
    parser.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.part:
        return parts.run_part_here(args.part, args.result, args.quick)
    if args.prepare_wheels:
        return wheels.prepare_wheels(args.prepare_wheels)
    only = {n for n in args.only.split(",") if n}
    if only - set(PARTS):
        parser.error(f"--only: unknown part(s) {sorted(only - set(PARTS))}; "
                     f"parts: {', '.join(PARTS)}")
    return check(args.out, args.quick, args.budget, args.jobs, only)


if __name__ == "__main__":
    sys.exit(main())
