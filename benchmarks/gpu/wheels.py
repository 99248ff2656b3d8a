"""The pure-Python packages the GPU machine lacks, as wheels for its Python (CPython 3.12, x86-64).

    .venv/bin/python benchmarks/gpu_check.py --prepare-wheels benchmarks/gpu/build/wheels
"""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What nbclient, ipykernel, nbval, ipywidgets and mnist1d need beyond the GPU image's packages
# (/work/.library/device/KINDS.md); versions come from constraints.txt.
CARRIED = """asttokens comm debugpy executing fastjsonschema ipykernel ipython
ipython-pygments-lexers ipywidgets jedi jsonschema jsonschema-specifications jupyter-client
jupyter-core jupyterlab-widgets matplotlib-inline mnist1d nbclient nbformat nbval nest-asyncio2
parso pexpect platformdirs prompt-toolkit ptyprocess pure-eval pyzmq referencing rpds-py stack-data
tornado traitlets wcwidth widgetsnbextension""".split()
DEVICE_PYTHON = {"python_version": "3.12", "python_full_version": "3.12.3",
                 "sys_platform": "linux", "platform_machine": "x86_64", "os_name": "posix",
                 "implementation_name": "cpython"}


def pinned(names, constraints=ROOT / "constraints.txt"):
    """{name: version} from constraints.txt for the GPU machine's Python (DEVICE_PYTHON)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in constraints.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(DEVICE_PYTHON):
                pins[canonicalize_name(req.name)] = next(iter(req.specifier)).version
    missing = [n for n in names if canonicalize_name(n) not in pins]
    if missing:
        raise ValueError(f"constraints.txt pins no version of {missing} for Python 3.12")
    return {n: pins[canonicalize_name(n)] for n in names}


def prepare_wheels(folder):
    """Download the CARRIED wheels for CPython 3.12 on x86-64 Linux into ``folder``; 0 if every
    one is there and nothing else (pip installs them with --no-deps: two versions would clash)."""
    from packaging.utils import canonicalize_name, parse_wheel_filename

    platforms = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                 "manylinux1_x86_64"]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", "-d", str(folder)]
    cmd += [a for p in platforms for a in ("--platform", p)]
    pins = pinned(CARRIED)
    subprocess.run(cmd + [f"{n}=={v}" for n, v in pins.items()], check=True)
    want = {(canonicalize_name(n), v) for n, v in pins.items()}
    wheels = sorted(Path(folder).glob("*.whl"))
    have = {parse_wheel_filename(w.name)[:2] for w in wheels}
    have = {(n, str(v)) for n, v in have}
    size = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"{len(wheels)} wheels, {size:.1f} MiB in {folder}")
    for problem, names in (("missing", want - have), ("not wanted (remove them)", have - want)):
        if names:
            print(f"{problem}: {sorted(names)}")
    return 0 if have == want else 1
