"""Moved to ``minilocal.viz.plots``; this name stays so that old imports keep working (it is the same
module object: ``minilocal.plots is minilocal.viz.plots``)."""
import sys

from .viz import plots as _moved

sys.modules[__name__] = _moved
