"""Run a notebook's code in-process and try answers on each of its check cells.

``run_notebook(path, trials)`` executes the notebook's code cells in one namespace up to its last
check cell. At each check cell, every trial answer for that exercise is swapped into the exercise
cell's solution block and the check cell is run on a copy of the namespace; the outcome (the check's
message, or PASS) is recorded. Then the real cell runs, so later cells see the notebook's own state.
"""
import contextlib
import copy
import io
import itertools
import linecache
import os
import re
import textwrap
from pathlib import Path

import nbformat
import numpy as np

from minilocal.teaching import release as rel

CHECK_CALL = re.compile(r"\bcheck\(\s*[\"'](\d+\.\d+)[\"']")
DEFINES = re.compile(r"^def (\w+)\(", re.M)
TOL = re.compile(r"\btol=([0-9.]+e-?\d+|[0-9.]+)")
PASSED = "PASS"


_CELLS = itertools.count()


def run_cell(source, name, namespace):
    """``exec`` one cell under a file name of its own, registered with linecache, so that
    ``inspect.getsource`` finds the functions it defines, as in a Jupyter kernel."""
    filename = f"/notebook-cells/{next(_CELLS)}/{name}.py"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)


def code_cells(path):
    """The sources of a notebook's code cells, without IPython magics."""
    cells = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    return ["\n".join(l for l in s.split("\n") if not l.lstrip().startswith("%")) for s in cells]


def with_body(source, body):
    """``source`` (an exercise cell) with its solution block replaced by ``body`` (dedented code)."""
    lines, out, inside = source.split("\n"), [], False
    for line in lines:
        if rel.BEGIN.match(line):
            indent = rel.BEGIN.match(line)[1]
            out += [indent + l if l.strip() else l for l in textwrap.dedent(body).strip("\n").split("\n")]
            inside = True
        elif rel.END.match(line):
            inside = False
        elif not inside:
            out.append(line)
    return "\n".join(out)


def scaled(value, factor):
    """``value`` with every float (array, tensor, number) multiplied by ``factor``; others kept."""
    if isinstance(value, dict):
        return {k: scaled(v, factor) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(scaled(v, factor) for v in value)
    if hasattr(value, "detach") and value.is_floating_point():
        return value.detach() * factor
    if isinstance(value, (float, np.floating)) or (isinstance(value, np.ndarray) and value.dtype.kind == "f"):
        return value * factor
    return value


def has_floats(value):
    """Whether a result holds any float."""
    if isinstance(value, dict):
        return any(has_floats(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return any(has_floats(v) for v in value)
    if hasattr(value, "is_floating_point"):
        return value.is_floating_point()
    return isinstance(value, (float, np.floating)) or (isinstance(value, np.ndarray) and value.dtype.kind == "f")


@contextlib.contextmanager
def kept_random_state(namespace):
    """Trials draw from copies of the notebook's generators and leave the global ones as they were."""
    import torch
    np_state, torch_state = np.random.get_state(), torch.random.get_rng_state()
    trial = dict(namespace)
    trial.update({k: copy.deepcopy(v) for k, v in namespace.items() if isinstance(v, np.random.Generator)})
    try:
        yield trial
    finally:
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)


def outcome(namespace, source):
    """PASS, or the message of the AssertionError the check cell raised."""
    try:
        with contextlib.redirect_stdout(io.StringIO()) as out:
            run_cell(source, "check cell", namespace)
    except AssertionError as e:
        return str(e)
    return PASSED if "PASS" in out.getvalue() else out.getvalue()


def near_tolerance(namespace, functions, tol):
    """Replace each function by one whose float results are off by a relative error of about 3 tol."""
    seen = {"floats": False}

    def off(fn):
        def answer(*args, **kwargs):
            result = fn(*args, **kwargs)
            seen["floats"] |= has_floats(result)
            return scaled(result, 1 + 6 * tol)  # |g - w| / (|g| + |w|) = 6 tol / (2 + 6 tol)
        return answer
    namespace.update({name: off(namespace[name]) for name in functions})
    return seen


def run_notebook(path, trials):
    """Execute ``path`` in-process; ``trials``: {exercise: {label: body}}. Returns
    {exercise: {"tol": float, "solution": outcome, "near_tol": outcome or None, label: outcome}}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cells, results = code_cells(path), {}
    checks = [CHECK_CALL.findall(source) for source in cells]
    last = max((i for i, found in enumerate(checks) if found), default=-1)
    namespace, exercise_cells = {"__name__": "__notebook__"}, {}
    cwd = os.getcwd()
    os.chdir(Path(path).parent)
    try:
        for source, exercises in zip(cells[:last + 1], checks):
            if exercise := rel.exercise_of(source):
                exercise_cells[f"{exercise[0]}.{exercise[1]}"] = source
            for e in exercises:
                results[e] = try_answers(namespace, exercise_cells[e], source, trials.get(e, {}))
            with contextlib.redirect_stdout(io.StringIO()):
                run_cell(source, Path(path).stem, namespace)
            plt.close("all")
    finally:
        os.chdir(cwd)
    return results


def try_answers(namespace, exercise_cell, check_cell, answers):
    """The outcome of the check cell for the solution, a near-tolerance answer and each answer."""
    found = TOL.search(check_cell)
    tol = float(found[1]) if found else 1e-6
    functions = DEFINES.findall(exercise_cell)
    result = {"tol": tol}
    with kept_random_state(namespace) as trial:
        result["solution"] = outcome(trial, check_cell)
    with kept_random_state(namespace) as trial:
        seen = near_tolerance(trial, functions, tol)
        near = outcome(trial, check_cell)
        result["near_tol"] = near if seen["floats"] else None
    for label, body in answers.items():
        with kept_random_state(namespace) as trial:
            try:
                run_cell(with_body(exercise_cell, body), re.sub(r"\W+", "_", label), trial)
                result[label] = outcome(trial, check_cell)
            except Exception as e:  # a trial that crashes is a broken trial, not a caught mistake
                result[label] = f"CRASHED {type(e).__name__}: {e}"
    return result
