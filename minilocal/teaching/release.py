"""The release tool: builds the student notebooks in course/ from the authored ones in solutions/.

In a code cell whose first line is the comment ``# Exercise N.M: <what to do>``, every block
between a ``# BEGIN SOLUTION`` line and a ``# END SOLUTION`` line becomes one line,
``raise NotImplementedError("Exercise N.M: <what to do>")``, indented like the BEGIN marker.
Everything else (cell ids, tags, metadata, markdown) is copied unchanged, and so are the
non-notebook files under solutions/. Then both copies are executed with nbclient (cwd = the
notebook's folder) and saved with their outputs, so they render on GitHub and nbval compares them.

    python -m minilocal.teaching.release                 # every notebook under solutions/
    python -m minilocal.teaching.release 01 02_greedy    # some of them, by number or name
    python -m minilocal.teaching.release --no-execute    # sources only; course/ outputs are cleared
"""
from __future__ import annotations

import argparse
import copy
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]
BEGIN = re.compile(r"^(\s*)#+ *BEGIN SOLUTION\s*$")
END = re.compile(r"^\s*#+ *END SOLUTION\s*$")
EXERCISE = re.compile(r"^# Exercise (\d+)\.(\d+): *(\S.*?)\s*$")
NUMBERED = re.compile(r"^(\d+)_")
SKIP_DIRS = {"__pycache__", ".ipynb_checkpoints"}
OWN_README = "README.md"  # solutions/ and course/ each describe themselves at their top level


class ReleaseError(ValueError):
    """A solutions notebook that cannot be turned into a course notebook; says where and why."""


def exercise_of(source: str) -> tuple[int, int, str] | None:
    """``(N, M, text)`` from a cell whose first line is ``# Exercise N.M: text``, else None."""
    match = EXERCISE.match(source.split("\n", 1)[0])
    return (int(match[1]), int(match[2]), match[3]) if match else None


def stub(exercise: tuple[int, int, str], indent: str = "") -> str:
    """The line that replaces a solution block: ``raise NotImplementedError("Exercise N.M: ...")``."""
    n, m, text = exercise
    message = f"Exercise {n}.{m}: {text}".replace("\\", "\\\\").replace('"', '\\"')
    return f'{indent}raise NotImplementedError("{message}")'


def strip_solutions(source: str, where: str = "cell") -> str:
    """Replace each solution block of one code cell's source with its stub; return the new source."""
    exercise = exercise_of(source)
    lines, out, begin = source.split("\n"), [], None
    for i, line in enumerate(lines, 1):
        opened, closed = BEGIN.match(line), END.match(line)
        if opened:
            if begin is not None:
                raise ReleaseError(f"{where}, line {i}: '# BEGIN SOLUTION' inside the solution block "
                                   f"opened on line {begin}; close it with '# END SOLUTION' first")
            if exercise is None:
                first = lines[0][:60]
                raise ReleaseError(f"{where}: a solution block needs the cell's first line to be "
                                   f"'# Exercise N.M: <what to do>' (the stub's text), got {first!r}")
            begin, body = i, 0
            out.append(stub(exercise, opened[1]))
        elif closed:
            if begin is None:
                raise ReleaseError(f"{where}, line {i}: '# END SOLUTION' without a '# BEGIN SOLUTION' "
                                   f"before it")
            if body == 0:
                raise ReleaseError(f"{where}, line {begin}: empty solution block; put the solution "
                                   f"between the markers")
            begin = None
        elif begin is not None:
            body += bool(line.strip())
        else:
            out.append(line)
    if begin is not None:
        raise ReleaseError(f"{where}, line {begin}: '# BEGIN SOLUTION' is never closed; add "
                           f"'# END SOLUTION' after the solution")
    if exercise is not None and len(out) == len(lines):
        raise ReleaseError(f"{where}: the cell announces Exercise {exercise[0]}.{exercise[1]} but has "
                           f"no '# BEGIN SOLUTION' ... '# END SOLUTION' block")
    return "\n".join(out)


def notebook_number(name: str) -> int | None:
    """The leading number of a notebook's file name ('02_greedy.ipynb' -> 2), or None for labs."""
    match = NUMBERED.match(name)
    return int(match[1]) if match else None


def make_course(nb: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """A copy of solutions notebook ``nb`` (file name ``name``) with stubs and no outputs."""
    number, seen = notebook_number(name), {}
    course = copy.deepcopy(nb)
    for i, cell in enumerate(course.cells):
        if cell.cell_type != "code":
            continue
        where = f"{name}, cell {i}" + (f" (id {cell['id']})" if "id" in cell else "")
        exercise = exercise_of(cell.source)
        if exercise is not None:
            label = f"{exercise[0]}.{exercise[1]}"
            if number is not None and exercise[0] != number:
                raise ReleaseError(f"{where}: Exercise {label} is in notebook {number:02d}; number "
                                   f"its exercises {number}.1, {number}.2, ...")
            if label in seen:
                raise ReleaseError(f"{where}: Exercise {label} is already used in cell {seen[label]}; "
                                   f"give each exercise its own number")
            seen[label] = i
        cell.source = strip_solutions(cell.source, where)
        cell.outputs, cell.execution_count = [], None
    return course


def execute(nb: nbformat.NotebookNode, folder: str | os.PathLike[str], timeout: int) -> float:
    """Run ``nb`` top to bottom in a fresh kernel with cwd ``folder``; returns seconds taken."""
    from nbclient import NotebookClient

    kernel = nb.metadata.get("kernelspec", {}).get("name", "python3")
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel, record_timing=False,
                            resources={"metadata": {"path": str(folder)}})
    start = time.perf_counter()
    client.execute()
    return time.perf_counter() - start


def find_notebooks(names: Sequence[str], solutions: Path) -> list[Path]:
    """Solutions notebooks (paths) matching ``names`` ('01', '01_backprop_numpy', a file name or
    path); all of them when ``names`` is empty."""
    every = sorted(p for p in solutions.rglob("*.ipynb") if not SKIP_DIRS & set(p.parts))
    if not names:
        return every
    chosen = []
    for name in names:
        stem = Path(name).name.removesuffix(".ipynb")
        hits = [p for p in every if p.stem == stem or p.stem.startswith(stem + "_")]
        if len(hits) != 1:
            problem = "matches no notebook" if not hits else f"matches {len(hits)} notebooks"
            available = ", ".join(p.stem for p in every) or "none"
            raise ReleaseError(f"release: {name!r} {problem} in {solutions}; available: {available}")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def copy_assets(solutions: Path, course: Path) -> list[Path]:
    """Copy every non-notebook file under solutions/ to the same place under course/, except the
    top-level README.md (each folder has its own)."""
    copied = []
    for path in sorted(solutions.rglob("*")):
        if path == solutions / OWN_README:
            continue
        if path.is_file() and path.suffix != ".ipynb" and not SKIP_DIRS & set(path.parts):
            target = course / path.relative_to(solutions)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            copied.append(target)
    return copied


def release(names: Sequence[str] = (), root: str | os.PathLike[str] = ROOT, run: bool = True,
            timeout: int = 120) -> list[tuple[str, float | None, float | None]]:
    """Build course/ from solutions/ under ``root``; returns rows (name, solution s, course s)."""
    solutions, course_dir = Path(root) / "solutions", Path(root) / "course"
    paths = find_notebooks(names, solutions)
    copy_assets(solutions, course_dir)
    # Every notebook is checked before any is executed, so a malformed one fails in seconds.
    books = [(path, nb, make_course(nb, path.name))
             for path in paths for nb in [nbformat.read(path, as_version=4)]]
    rows = []
    for path, nb, course in books:
        rel = path.relative_to(solutions)
        target = course_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        times = [None, None]
        if run:
            for k, (book, where) in enumerate(((nb, path), (course, target))):
                try:
                    times[k] = execute(book, where.parent, timeout)
                except Exception as e:  # a failing cell: say which notebook, leave files unchanged
                    raise ReleaseError(f"release: executing {where.relative_to(root)} failed "
                                       f"(nothing was written for {rel}):\n{e}") from None
            nbformat.write(nb, path)
        nbformat.write(course, target)
        rows.append((str(rel), *times))
    return rows


def format_table(rows: Sequence[tuple[str, float | None, float | None]]) -> str:
    """The per-notebook runtime table printed at the end of a release."""
    width = max([len("notebook")] + [len(r[0]) for r in rows])
    lines = [f"{'notebook':<{width}}  solutions   course"]
    for name, sol, crs in rows:
        cols = [f"{t:8.1f} s" if t is not None else "       --" for t in (sol, crs)]
        lines.append(f"{name:<{width}}  {cols[0]}  {cols[1]}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minilocal.teaching.release", description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="notebooks to build (default: all), e.g. 01 or 02_greedy")
    parser.add_argument("--no-execute", action="store_true", help="only regenerate course/ sources")
    parser.add_argument("--timeout", type=int, default=120, help="seconds allowed per cell (default 120)")
    args = parser.parse_args(argv)
    if args.timeout < 1:
        parser.error(f"--timeout must be at least 1 second, got {args.timeout}")
    # One BLAS/torch thread: the machines this runs on are shared, and it keeps outputs reproducible.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        rows = release(args.names, run=not args.no_execute, timeout=args.timeout)
    except ReleaseError as e:
        print(e, file=sys.stderr)
        return 1
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
