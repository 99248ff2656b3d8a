"""Moved to ``minilocal.teaching.grade``; this name stays so that old imports keep working (it is the same
module object: ``minilocal.grade is minilocal.teaching.grade``)."""
import sys

from .teaching import grade as _moved

if __name__ == "__main__":  # python -m minilocal.grade still runs the tool
    sys.exit(_moved.main())

sys.modules[__name__] = _moved
