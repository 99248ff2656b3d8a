"""What the course needs to teach, kept apart from the library it teaches:

* ``checks``: the exercise checks (``check("6.1", student_fn, reference_fn, ...)``), each one
  comparing a student's function with the reference on cases that reject plausible wrong answers.
* ``release``: builds the student notebooks in course/ from solutions/
  (``python -m minilocal.teaching.release``).
* ``grade``: runs a class's submitted notebooks and writes a gradebook
  (``python -m minilocal.teaching.grade submissions/ --out grades.csv``).

The old names (``minilocal.checks``, ``minilocal.release``, ``minilocal.grade``) are the same
modules. ``check`` is importable from here directly.
"""


def __getattr__(name):
    if name == "check":
        from .checks import check

        return check
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
