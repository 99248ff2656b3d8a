"""The class grader on crafted submissions: right, wrong, not done, hanging, crashing, cells
deleted or reordered, check redefined, not JSON; each gets a clear row and none stops the others."""
import csv

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from minilocal.teaching import grade

KERNEL = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
SETUP = "import numpy as np\nfrom minilocal.teaching.checks import check"
STUB = '# Exercise 1.1: return x plus one\ndef f(x):\n    raise NotImplementedError("Exercise 1.1: return x plus one")'
CHECK = "f = check('1.1', f, lambda x: x + 1, [(np.arange(3.0),)])"
STUB2 = '# Exercise 1.2: return twice x\ndef g(x):\n    raise NotImplementedError("Exercise 1.2: return twice x")'
CHECK2 = "g = check('1.2', g, lambda x: 2 * x, [(np.arange(3.0),)])"


def course_notebook():
    cells = [new_markdown_cell("# 01"), new_code_cell(SETUP), new_code_cell(STUB), new_code_cell(CHECK),
             new_code_cell(STUB2), new_code_cell(CHECK2)]
    for i, cell in enumerate(cells):
        cell.id = f"t01-{i}"
    return new_notebook(cells=cells, metadata=KERNEL)


def submission(f_body=None, g_body=None, edit=None):
    nb = course_notebook()
    if f_body:
        nb.cells[2].source = "# Exercise 1.1: return x plus one\ndef f(x):\n    " + f_body
    if g_body:
        nb.cells[4].source = "# Exercise 1.2: return twice x\ndef g(x):\n    " + g_body
    if edit:
        edit(nb)
    return nb


def swap(nb):
    nb.cells[2], nb.cells[4] = nb.cells[4], nb.cells[2]


CRAFTED = {
    "right": submission("return x + 1", "return x * 2"),
    "wrong": submission("return x - 1", "return x * 2"),
    "not_done": submission(),
    "hangs": submission("while True:\n        pass", "return x * 2"),
    "crashes": submission("import os\n    os._exit(1)", "return x * 2"),
    "deletes": submission(edit=lambda nb: nb.cells.pop(3)),
    "reorders": submission(edit=swap),
    "redefines": submission("return x - 1", edit=lambda nb: nb.cells[2].__setitem__(
        "source", nb.cells[2].source + "\ncheck = lambda e, s, r, c, **k: s\n")),
    "edits_check": submission("return x - 1", edit=lambda nb: nb.cells[3].__setitem__(
        "source", "f = check('1.1', f, f, [(np.arange(3.0),)])")),
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("grading")
    (root / "course").mkdir()
    nbformat.write(course_notebook(), root / "course" / "01_tiny.ipynb")
    for student, nb in CRAFTED.items():
        (root / "subs" / student).mkdir(parents=True)
        nbformat.write(nb, root / "subs" / student / "01_tiny.ipynb")
    (root / "subs" / "garbled").mkdir()
    (root / "subs" / "garbled" / "01_tiny.ipynb").write_text("{not json")
    (root / "subs" / "renamed").mkdir()
    nbformat.write(CRAFTED["right"], root / "subs" / "renamed" / "my_work.ipynb")
    out = root / "grades.csv"
    assert grade.main([str(root / "subs"), "--out", str(out), "--course", str(root / "course"),
                       "--timeout", "5"]) == 0
    with open(out) as f:
        rows = list(csv.DictReader(f))
    return {(r["student"], r["exercise"]): r for r in rows}


@pytest.mark.parametrize("student, exercise, status, message", [
    ("right", "1.1", "pass", ""),
    ("right", "1.2", "pass", ""),
    ("wrong", "1.1", "fail", r"Exercise 1\.1: FAIL on case 0: result at \[0\] is -1, expected 1: relative error"),
    ("wrong", "1.2", "pass", ""),
    ("not_done", "1.1", "not done", ""),
    ("hangs", "1.1", "not run", "timed out: a cell ran longer than 5 s"),
    ("hangs", "1.2", "pass", ""),                     # the next cells still run
    ("crashes", "1.1", "not run", "the kernel died"),
    ("deletes", "1.1", "not graded", "cells deleted: t01-3"),
    ("reorders", "1.2", "not graded", "cells reordered"),
    ("redefines", "1.1", "fail", "check was redefined"),
    ("edits_check", "1.1", "fail", r"FAIL on case 0"),  # the course's check cell ran, not the edited one
    ("garbled", "1.1", "not graded", "not a valid notebook"),
    ("renamed", "", "not graded", "no course notebook is called my_work.ipynb"),
])
def test_every_submission_gets_a_clear_row(graded, student, exercise, status, message):
    import re
    row = graded[(student, exercise)]
    assert row["status"] == status, row
    assert re.search(message, row["message"]), row


def test_the_summary_counts_passes():
    rows = [dict(student="a", notebook="n", exercise="1.1", status="pass", message=""),
            dict(student="a", notebook="n", exercise="1.2", status="fail", message="x")]
    text = grade.summary(rows)
    assert "  a: 1 / 1 / 0 / 0 / 0" in text and "  n 1.1: 1 of 1" in text
