"""Moved to ``minilocal.teaching.checks``; this name stays so that old imports keep working (it is the same
module object: ``minilocal.checks is minilocal.teaching.checks``)."""
import sys

from .teaching import checks as _moved

sys.modules[__name__] = _moved
