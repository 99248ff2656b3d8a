"""The release tool: stub format and errors on tiny notebooks, course/ in sync with solutions/,
no solution text leaking into course/, and a wrong answer failing its check cell."""
import contextlib
import io
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from exercise_runs import run_cell
from minilocal.teaching import release as rel

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS, COURSE = ROOT / "solutions", ROOT / "course"
KERNEL = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
EXERCISE_CELL = ("# Exercise 1.1: return x plus one\n"
                 "def f(x):\n"
                 "    # BEGIN SOLUTION\n"
                 "    y = x + 1\n"
                 "    return y\n"
                 "    # END SOLUTION")


def notebook(*sources):
    """A tiny in-memory notebook: a markdown title, then one code cell per source."""
    cells = [new_markdown_cell("# Title")] + [new_code_cell(s) for s in sources]
    for cell in cells:
        cell.metadata["tags"] = ["keep-me"]
    return new_notebook(cells=cells, metadata=KERNEL)


# --- (c) stub format and errors on unit inputs ---------------------------------------------------
def test_stub_replaces_the_block_indented_like_the_marker():
    out = rel.strip_solutions(EXERCISE_CELL)
    assert out == ("# Exercise 1.1: return x plus one\n"
                   "def f(x):\n"
                   '    raise NotImplementedError("Exercise 1.1: return x plus one")')


def test_stub_runs_and_raises_the_exercise_text():
    namespace = {}
    exec(rel.strip_solutions(EXERCISE_CELL), namespace)
    with pytest.raises(NotImplementedError, match=r"^Exercise 1\.1: return x plus one$"):
        namespace["f"](1)


def test_two_blocks_in_one_cell_both_become_stubs_and_code_between_stays():
    src = ("# Exercise 2.3: forward and backward of relu\n"
           "def fwd(x):\n    # BEGIN SOLUTION\n    return x\n    # END SOLUTION\n\n"
           "def bwd(d):\n    if d is None:\n        # BEGIN SOLUTION\n        return 0\n        # END SOLUTION\n"
           "    return d")
    lines = rel.strip_solutions(src).split("\n")
    assert lines[2] == '    raise NotImplementedError("Exercise 2.3: forward and backward of relu")'
    assert lines[6] == '        raise NotImplementedError("Exercise 2.3: forward and backward of relu")'
    assert lines[-1] == "    return d" and len(lines) == 8


def test_quotes_in_the_exercise_text_are_escaped():
    src = '# Exercise 1.2: say "hi" \\ bye\ndef g():\n    # BEGIN SOLUTION\n    pass\n    # END SOLUTION'
    namespace = {}
    exec(rel.strip_solutions(src), namespace)
    with pytest.raises(NotImplementedError) as info:
        namespace["g"]()
    assert str(info.value) == 'Exercise 1.2: say "hi" \\ bye'


def test_cells_without_markers_are_unchanged():
    src = "x = 1\n# a comment\nprint(x)"
    assert rel.strip_solutions(src) == src


@pytest.mark.parametrize("source, message", [
    ("# Exercise 1.1: a\n# BEGIN SOLUTION\nx = 1\n", "never closed"),
    ("# Exercise 1.1: a\nx = 1\n# END SOLUTION", "without a '# BEGIN SOLUTION'"),
    ("# Exercise 1.1: a\n# BEGIN SOLUTION\n# BEGIN SOLUTION\nx = 1\n# END SOLUTION", "inside the solution block"),
    ("def f():\n    # BEGIN SOLUTION\n    pass\n    # END SOLUTION", "first line to be '# Exercise N.M"),
    ("x = 0\n# Exercise 1.1: a\n# BEGIN SOLUTION\nx = 1\n# END SOLUTION", "first line to be '# Exercise N.M"),
    ("# Exercise 1.1: a\n# BEGIN SOLUTION\n\n# END SOLUTION", "empty solution block"),
    ("# Exercise 1.1: a\nx = 1", "no '# BEGIN SOLUTION'"),
])
def test_malformed_cells_get_a_clear_error(source, message):
    with pytest.raises(rel.ReleaseError, match=re.escape(message)):
        rel.strip_solutions(source, where="01_x.ipynb, cell 3")


def test_exercise_number_must_match_the_notebook_number():
    with pytest.raises(rel.ReleaseError, match=r"02_x\.ipynb, cell 1.*Exercise 1\.1 is in notebook 02"):
        rel.make_course(notebook(EXERCISE_CELL), "02_x.ipynb")


def test_duplicate_exercise_numbers_are_refused():
    with pytest.raises(rel.ReleaseError, match=r"cell 2.*Exercise 1\.1 is already used in cell 1"):
        rel.make_course(notebook(EXERCISE_CELL, EXERCISE_CELL), "01_x.ipynb")


def test_make_course_keeps_ids_tags_metadata_and_markdown_and_clears_outputs():
    nb = notebook("print(1)", EXERCISE_CELL)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    nb.cells[1].execution_count = 1
    course = rel.make_course(nb, "01_x.ipynb")
    assert [c.id for c in course.cells] == [c.id for c in nb.cells]
    assert [c.metadata for c in course.cells] == [c.metadata for c in nb.cells]
    assert course.metadata == nb.metadata and course.cells[0] == nb.cells[0]
    assert course.cells[1].outputs == [] and course.cells[1].execution_count is None
    assert "BEGIN SOLUTION" in nb.cells[2].source, "the solutions notebook itself must not change"
    assert "BEGIN SOLUTION" not in course.cells[2].source


def test_unnumbered_notebooks_skip_the_number_rule():
    rel.make_course(notebook(EXERCISE_CELL), "lab_gpu.ipynb")


def test_release_without_execution_writes_course_and_copies_assets(tmp_path):
    (tmp_path / "solutions" / "data").mkdir(parents=True)
    nbformat.write(notebook("x = 1", EXERCISE_CELL), tmp_path / "solutions" / "01_a.ipynb")
    nbformat.write(notebook("y = 2"), tmp_path / "solutions" / "02_b.ipynb")
    (tmp_path / "solutions" / "data" / "table.csv").write_text("a,b\n")
    (tmp_path / "solutions" / "README.md").write_text("solutions readme")
    (tmp_path / "solutions" / "data" / "README.md").write_text("data readme")
    (tmp_path / "course").mkdir()
    (tmp_path / "course" / "README.md").write_text("course readme")
    rows = rel.release(["01"], root=tmp_path, run=False)
    assert rows == [("01_a.ipynb", None, None)]
    assert not (tmp_path / "course" / "02_b.ipynb").exists()
    course = nbformat.read(tmp_path / "course" / "01_a.ipynb", as_version=4)
    assert course.cells[2].source.endswith('raise NotImplementedError("Exercise 1.1: return x plus one")')
    assert (tmp_path / "course" / "data" / "table.csv").read_text() == "a,b\n"
    assert (tmp_path / "course" / "data" / "README.md").read_text() == "data readme"
    assert (tmp_path / "course" / "README.md").read_text() == "course readme", "course/ keeps its README"
    assert "01_a.ipynb" in rel.format_table(rows)


def test_subfolders_keep_their_place_and_labs_need_no_number(tmp_path):
    (tmp_path / "solutions" / "labs").mkdir(parents=True)
    lab = notebook(EXERCISE_CELL.replace("1.1", "3.1"))
    nbformat.write(lab, tmp_path / "solutions" / "labs" / "lab1_scaling.ipynb")
    assert rel.release(["lab1"], root=tmp_path, run=False) == [("labs/lab1_scaling.ipynb", None, None)]
    course = nbformat.read(tmp_path / "course" / "labs" / "lab1_scaling.ipynb", as_version=4)
    assert course.cells[1].source.endswith('raise NotImplementedError("Exercise 3.1: return x plus one")')


@pytest.mark.parametrize("names, message", [(["07"], "matches no notebook"), (["0"], "matches no notebook")])
def test_unknown_names_are_refused_with_the_list(tmp_path, names, message):
    (tmp_path / "solutions").mkdir()
    nbformat.write(notebook("x = 1"), tmp_path / "solutions" / "01_a.ipynb")
    with pytest.raises(rel.ReleaseError, match=f"{message}.*available: 01_a"):
        rel.release(names, root=tmp_path, run=False)


def test_command_line_reports_errors_and_writes_nothing(capsys):
    assert rel.main(["--no-execute", "99_no_such_notebook"]) == 1
    assert "'99_no_such_notebook' matches no notebook" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        rel.main(["--timeout", "0"])
    assert "--timeout must be at least 1 second, got 0" in capsys.readouterr().err


def test_release_executes_both_copies_with_outputs(tmp_path):
    (tmp_path / "solutions").mkdir()
    check = ("try:\n    print(f(1))\nexcept NotImplementedError as e:\n    print('stub:', e)")
    nbformat.write(notebook(EXERCISE_CELL, check), tmp_path / "solutions" / "01_a.ipynb")
    rel.release(root=tmp_path, timeout=60)
    solved = nbformat.read(tmp_path / "solutions" / "01_a.ipynb", as_version=4)
    course = nbformat.read(tmp_path / "course" / "01_a.ipynb", as_version=4)
    assert solved.cells[2].outputs[0].text == "2\n"
    assert course.cells[2].outputs[0].text == "stub: Exercise 1.1: return x plus one\n"
    assert all(c.execution_count is not None for c in course.cells if c.cell_type == "code")


# --- (a) course/ is in sync with solutions/, and both are stored executed ------------------------
def solution_notebooks():
    return sorted(p for p in SOLUTIONS.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def course_notebooks():
    return sorted(p for p in COURSE.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


NOTEBOOKS = [p.relative_to(SOLUTIONS) for p in solution_notebooks()]
by_name = pytest.mark.parametrize("rel_path", NOTEBOOKS, ids=[str(p) for p in NOTEBOOKS])


def test_every_course_notebook_has_a_source_and_the_reverse():
    assert NOTEBOOKS, "no notebooks under solutions/"
    assert [p.relative_to(COURSE) for p in course_notebooks()] == NOTEBOOKS


def test_course_assets_equal_the_solutions_assets():
    for path in SOLUTIONS.rglob("*"):
        if path.is_file() and path.suffix != ".ipynb" and path != SOLUTIONS / "README.md" \
                and not rel.SKIP_DIRS & set(path.parts):
            target = COURSE / path.relative_to(SOLUTIONS)
            assert target.is_file() and target.read_bytes() == path.read_bytes(), \
                f"{target} differs from {path}; run `python -m minilocal.teaching.release --no-execute`"


@by_name
def test_course_is_in_sync_with_solutions(rel_path):
    solved = nbformat.read(SOLUTIONS / rel_path, as_version=4)
    expected = rel.make_course(solved, rel_path.name)
    course = nbformat.read(COURSE / rel_path, as_version=4)
    hint = f"course/{rel_path} is stale: run `python -m minilocal.teaching.release {rel_path.stem}`"
    assert course.metadata.get("kernelspec") == expected.metadata.get("kernelspec"), hint
    assert len(course.cells) == len(expected.cells), hint
    for i, (got, want) in enumerate(zip(course.cells, expected.cells)):
        assert (got.cell_type, got.get("id"), got.source) == (want.cell_type, want.get("id"), want.source), \
            f"{hint} (cell {i})"
        assert got.metadata == want.metadata, f"{hint} (cell {i} metadata)"


@pytest.mark.parametrize("folder", ["solutions", "course"])
@by_name
def test_notebooks_are_stored_executed_without_errors(folder, rel_path):
    nb = nbformat.read(ROOT / folder / rel_path, as_version=4)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or "skip-execution" in cell.metadata.get("tags", []):
            continue
        assert cell.execution_count is not None, \
            f"{folder}/{rel_path} cell {i} was never run: release it with `python -m minilocal.teaching.release`"
        if "raises-exception" not in cell.metadata.get("tags", []):
            errors = [o for o in cell.outputs if o.output_type == "error"]
            assert not errors, f"{folder}/{rel_path} cell {i} stored an error: {errors[0].get('ename')}"


# --- (b) no solution text leaks into course/ ------------------------------------------------------
def leaked_lines(solved, course):
    """Lines found only inside solution blocks of ``solved`` that appear anywhere in ``course``."""
    inside, outside = set(), set()
    for cell in solved.cells:
        in_block = False
        for line in cell.source.split("\n"):
            text = line.strip()
            if cell.cell_type == "code" and text.endswith("BEGIN SOLUTION") and text.startswith("#"):
                in_block = True
            elif cell.cell_type == "code" and text.endswith("END SOLUTION") and text.startswith("#"):
                in_block = False
            elif text:
                (inside if in_block else outside).add(text)
    course_lines = {line.strip() for cell in course.cells for line in cell.source.split("\n")}
    return sorted((inside - outside) & course_lines)


def test_leak_detector_finds_a_leaked_line():
    solved = notebook(EXERCISE_CELL)
    course = rel.make_course(solved, "01_x.ipynb")
    assert leaked_lines(solved, course) == []
    course.cells.append(new_markdown_cell("Hint: y = x + 1"))
    course.cells.append(new_code_cell("    return y"))
    assert leaked_lines(solved, course) == ["return y"]


@by_name
def test_no_solution_text_in_course(rel_path):
    solved = nbformat.read(SOLUTIONS / rel_path, as_version=4)
    course = nbformat.read(COURSE / rel_path, as_version=4)
    for cell in course.cells:
        assert "BEGIN SOLUTION" not in cell.source and "END SOLUTION" not in cell.source
    assert leaked_lines(solved, course) == [], f"course/{rel_path} shows solution lines"
    assert sum("BEGIN SOLUTION" in c.source for c in solved.cells) == \
        sum("raise NotImplementedError(\"Exercise" in c.source for c in course.cells)


# --- (d) a stub says "not done yet"; a wrong answer fails (every exercise: test_exercises.py) ---------
CHECK_CALL = re.compile(r"\bcheck\(\s*[\"'](\d+\.\d+)[\"']")
DEFINES = re.compile(r"^def (\w+)\(", re.M)


def code_cells(path):
    """The sources of a notebook's code cells, without IPython magics."""
    cells = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    return ["\n".join(l for l in s.split("\n") if not l.lstrip().startswith("%")) for s in cells]


def run_until_last_check(path, monkeypatch, on_check):
    """Exec a notebook's code cells in one namespace up to its last check cell, calling
    ``on_check(namespace, source, exercises, functions)`` in place of running each check cell;
    ``functions`` are the names the matching exercise cells define. Returns the exercises seen."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    monkeypatch.chdir(path.parent)
    cells = code_cells(path)
    checks = [CHECK_CALL.findall(source) for source in cells]
    last = max((i for i, found in enumerate(checks) if found), default=-1)
    namespace, defined, seen = {"__name__": "__notebook__"}, {}, []
    for source, exercises in zip(cells[:last + 1], checks):
        if exercise := rel.exercise_of(source):
            defined[f"{exercise[0]}.{exercise[1]}"] = DEFINES.findall(source)
        with contextlib.redirect_stdout(io.StringIO()):
            if exercises:
                functions = [name for e in exercises for name in defined.get(e, [])]
                on_check(namespace, source, exercises, functions)
                seen += exercises
            else:
                run_cell(source, path.stem, namespace)  # inspect.getsource works, as in Jupyter
        plt.close("all")
    return seen


def exec_check(namespace, source):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, "check cell", "exec"), namespace)
    return out.getvalue()


@by_name
def test_every_stub_falls_back_to_the_reference(rel_path, monkeypatch):
    def on_check(namespace, source, exercises, functions):
        out = exec_check(namespace, source)
        for e in exercises:
            assert f"Exercise {e}: not done yet -> using the reference implementation\n" in out, out
    run_until_last_check(COURSE / rel_path, monkeypatch, on_check)


def test_a_wrongly_filled_course_exercise_fails(monkeypatch):
    """The example by hand: Exercise 1.1 with the bias subtracted instead of added."""
    path = COURSE / "01_backprop_numpy.ipynb"
    cells = code_cells(path)
    index = next(i for i, source in enumerate(cells) if source.startswith("# Exercise 1.1:"))
    stub_line = rel.stub(rel.exercise_of(cells[index]), "    ")
    assert stub_line in cells[index]
    filled = cells[index].replace(stub_line, '    return x @ params["weight"].T - params["bias"], (x, params)')
    namespace = {"__name__": "__notebook__"}
    monkeypatch.chdir(path.parent)
    for source in cells[:index]:
        exec(source, namespace)
    exec(filled, namespace)
    with pytest.raises(AssertionError, match=r"Exercise 1\.1: FAIL on case 0 \(cases 0-2\): result\[0\] at \[0, 0\] is .* relative error"):
        exec_check(namespace, cells[index + 1])
