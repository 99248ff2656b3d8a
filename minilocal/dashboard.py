"""Moved to ``minilocal.viz.dashboard``; this name stays so that old imports keep working (it is the same
module object: ``minilocal.dashboard is minilocal.viz.dashboard``)."""
import sys

from .viz import dashboard as _moved

sys.modules[__name__] = _moved
