"""Moved to ``minilocal.viz.widgets``; this name stays so that old imports keep working (it is the same
module object: ``minilocal.widgets is minilocal.viz.widgets``)."""
import sys

from .viz import widgets as _moved

sys.modules[__name__] = _moved
