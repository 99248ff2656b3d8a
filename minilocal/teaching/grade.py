"""Grade a class: run every submitted notebook in a fresh kernel and write a CSV gradebook.

    python -m minilocal.teaching.grade submissions/ --out grades.csv            # 300 s per cell
    python -m minilocal.teaching.grade submissions/ --out grades.csv --timeout 60

``submissions/`` holds one folder per student (``submissions/alice/06_numpy_to_torch.ipynb``);
a notebook is matched with the course notebook of the same file name. Each one runs top to bottom
in its own kernel (cwd: the course notebook's folder) with the course's own check cells in place
of the student's, so an edited check cell changes nothing. Every exercise gets one row: ``pass``,
``fail`` (with the check's message), ``not done`` (the stub still raises) or ``not run`` (the
notebook stopped before its check). A notebook that is not valid JSON, deletes or reorders the
course's cells, redefines ``check``, hangs past the time limit or kills its kernel gets rows that
say so, and the others are graded as usual. A summary per student and per exercise is printed.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import nbformat

from .release import ROOT, exercise_of

CHECK_CALL = re.compile(r"\bcheck\(\s*[\"'](\d+\.\d+)[\"']")  # a check cell: check("6.1", ...)

FIELDS = ["student", "notebook", "exercise", "status", "message"]
PREAMBLE = '''\
import json as _json, minilocal.teaching.checks as _checks
_GRADE_FILE, _real_check = {path!r}, _checks.check
def _record(exercise, status, message=""):
    with open(_GRADE_FILE, "a") as f:
        f.write(_json.dumps([exercise, status, message]) + "\\n")
def _grade_check(exercise, student_fn, reference_fn, *args, **kwargs):
    try:
        chosen = _real_check(exercise, student_fn, reference_fn, *args, **kwargs)
    except AssertionError as e:
        _record(exercise, "fail", str(e))
        raise
    _record(exercise, "not done" if chosen is reference_fn and student_fn is not reference_fn else "pass")
    return chosen
def _grade_guard(current, exercises):
    if current is not _grade_check:
        for e in exercises:
            _record(e, "fail", "check was redefined in the notebook; the course's check ran instead")
    return _grade_check
_checks.check = _grade_check
'''


def course_notebooks(course: str | os.PathLike[str]) -> dict[str, Path]:
    """{file name: path} of the course notebooks under ``course``."""
    return {p.name: p for p in sorted(Path(course).rglob("*.ipynb")) if ".ipynb_checkpoints" not in p.parts}


def exercises_of(nb: nbformat.NotebookNode) -> list[str]:
    """The exercise labels ('6.1', ...) of a notebook, in order."""
    found = [exercise_of(c.source) for c in nb.cells if c.cell_type == "code"]
    return [f"{e[0]}.{e[1]}" for e in found if e]


def structure_problem(submitted: nbformat.NotebookNode,
                      course: nbformat.NotebookNode) -> str | None:
    """Why ``submitted`` cannot be graded against ``course`` (deleted or reordered cells), or None."""
    mine = [c.get("id") for c in submitted.cells]
    theirs = [c.get("id") for c in course.cells]
    missing = [i for i in theirs if i not in mine]
    if missing:
        return f"cells deleted: {', '.join(map(str, missing[:5]))}{' ...' if len(missing) > 5 else ''}; " \
               f"restore them from the course notebook"
    if [i for i in mine if i in theirs] != theirs:
        return "cells reordered: put the course's cells back in their order (new cells may go anywhere)"
    return None


def graded_copy(submitted: nbformat.NotebookNode, course: nbformat.NotebookNode,
                record_path: str | os.PathLike[str]) -> nbformat.NotebookNode:
    """The notebook to run: the submission with the course's check cells, guarded, and a preamble."""
    checks = {c.get("id"): c for c in course.cells
              if c.cell_type == "code" and CHECK_CALL.search(c.source)}
    nb = nbformat.v4.new_notebook(metadata=course.metadata)
    nb.cells.append(nbformat.v4.new_code_cell(PREAMBLE.format(path=str(record_path))))
    for cell in submitted.cells:
        if cell.get("id") in checks:
            labels = CHECK_CALL.findall(checks[cell.id].source)
            cell = nbformat.v4.new_code_cell(f"check = _grade_guard(check, {labels!r})\n" + checks[cell.id].source)
        nb.cells.append(cell)
    for cell in nb.cells:
        cell.pop("id", None)  # the preamble is new; nbclient needs no ids
    nb.nbformat_minor = 4
    return nb


def run_notebook(nb: nbformat.NotebookNode, folder: str | os.PathLike[str],
                 timeout: int) -> str | None:
    """Execute ``nb``; returns None, or what stopped it (a time-out, a dead kernel)."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    # interrupt_on_timeout: a cell that hangs is stopped and the later cells still run
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                            interrupt_on_timeout=True, resources={"metadata": {"path": str(folder)}})
    try:
        client.execute()
    except CellTimeoutError:
        return f"timed out: a cell ran longer than {timeout} s (an endless loop?)"
    except DeadKernelError:
        return "the kernel died (os._exit, a crash or out of memory)"
    except Exception as e:  # the grader must go on to the next notebook whatever happens here
        return f"could not run: {type(e).__name__}: {e}"
    return None


def why_not_run(nb: nbformat.NotebookNode, exercise: str, timeout: int) -> str:
    """Why the check of ``exercise`` recorded nothing, from its cell's error output."""
    for cell in nb.cells:
        if cell.cell_type == "code" and exercise in CHECK_CALL.findall(cell.source):
            for output in cell.get("outputs", []):
                if output.output_type == "error" and output.ename == "KeyboardInterrupt":
                    return f"timed out: a cell ran longer than {timeout} s (an endless loop?)"
                if output.output_type == "error":
                    return f"its check cell raised {output.ename}: {output.evalue[:200]}"
    return "its check cell did not run"


def grade_notebook(student: str, path: str | os.PathLike[str], course_path: Path,
                   timeout: int) -> list[dict[str, str]]:
    """Rows (dicts of FIELDS) for one submitted notebook."""
    course = nbformat.read(course_path, as_version=4)
    labels = exercises_of(course)

    def rows(status, message):
        return [dict(student=student, notebook=course_path.name, exercise=e, status=status, message=message)
                for e in labels]
    try:
        submitted = nbformat.read(path, as_version=4)
    except Exception as e:
        return rows("not graded", f"not a valid notebook ({type(e).__name__}: {str(e)[:120]}); "
                                  f"submit the .ipynb file saved by Jupyter")
    problem = structure_problem(submitted, course)
    if problem:
        return rows("not graded", problem)
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "record.jsonl"
        record.touch()
        nb = graded_copy(submitted, course, record)
        stopped = run_notebook(nb, course_path.parent, timeout)
        found = {}
        for line in record.read_text().splitlines():
            exercise, status, message = json.loads(line)
            if found.get(exercise, ("pass",))[0] != "fail":  # a recorded failure stays a failure
                found[exercise] = (status, message)
    out = []
    for e in labels:
        status, message = found.get(e, ("not run", stopped or why_not_run(nb, e, timeout)))
        out.append(dict(student=student, notebook=course_path.name, exercise=e, status=status,
                        message=message))
    return out


def submissions(folder: str | os.PathLike[str]) -> Iterator[tuple[str, Path]]:
    """(student, notebook path) pairs: the first folder under ``folder`` names the student."""
    folder = Path(folder)
    for path in sorted(folder.rglob("*.ipynb")):
        if ".ipynb_checkpoints" in path.parts:
            continue
        rel = path.relative_to(folder)
        yield (rel.parts[0] if len(rel.parts) > 1 else path.stem), path


def grade(folder: str | os.PathLike[str], course: str | os.PathLike[str] = ROOT / "course",
          timeout: int = 300) -> list[dict[str, str]]:
    """Rows for every submitted notebook under ``folder``."""
    known, rows = course_notebooks(course), []
    for student, path in submissions(folder):
        if path.name not in known:
            rows.append(dict(student=student, notebook=path.name, exercise="", status="not graded",
                             message=f"no course notebook is called {path.name}; keep the file name"))
            continue
        rows += grade_notebook(student, path, known[path.name], timeout)
    return rows


def summary(rows: Iterable[Mapping[str, str]]) -> str:
    """A few lines: passes per student, and per exercise."""
    lines, per_student, per_exercise = [], defaultdict(Counter), defaultdict(Counter)
    for r in rows:
        per_student[r["student"]][r["status"]] += 1
        if r["exercise"]:
            per_exercise[f"{r['notebook']} {r['exercise']}"][r["status"]] += 1
    lines.append("student: pass / fail / not done / not run / not graded")
    for student, c in sorted(per_student.items()):
        lines.append(f"  {student}: {c['pass']} / {c['fail']} / {c['not done']} / {c['not run']} / {c['not graded']}")
    lines.append("exercise: students passing")
    for exercise, c in sorted(per_exercise.items()):
        lines.append(f"  {exercise}: {c['pass']} of {sum(c.values())}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minilocal.teaching.grade", description=__doc__.split("\n")[0])
    parser.add_argument("submissions", help="folder with one sub-folder of notebooks per student")
    parser.add_argument("--out", default="grades.csv", help="the CSV gradebook to write (default grades.csv)")
    parser.add_argument("--course", default=str(ROOT / "course"), help="the course notebooks (default course/)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds allowed per cell (default 300)")
    args = parser.parse_args(argv)
    if not Path(args.submissions).is_dir():
        parser.error(f"{args.submissions} is not a folder; give the folder of submissions")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one kernel at a time, one thread each
    rows = grade(args.submissions, Path(args.course), args.timeout)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    print(summary(rows))
    print(f"wrote {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
