"""The release tool: stub format and errors on tiny notebooks, course/ in sync with solutions/,
no solution text leaking into course/, and a wrong answer failing its check cell."""
import contextlib
import io
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from minilocal import release as rel

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


@pytest.mark.parametrize("names, message", [(["07"], "matches no notebook"), (["0"], "matches no notebook")])
def test_unknown_names_are_refused_with_the_list(tmp_path, names, message):
    (tmp_path / "solutions").mkdir()
    nbformat.write(notebook("x = 1"), tmp_path / "solutions" / "01_a.ipynb")
    with pytest.raises(rel.ReleaseError, match=f"{message}.*available: 01_a"):
        rel.release(names, root=tmp_path, run=False)


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
