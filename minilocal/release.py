"""Moved to ``minilocal.teaching.release``; this name stays so that old imports keep working (it is the same
module object: ``minilocal.release is minilocal.teaching.release``)."""
import sys

from .teaching import release as _moved

if __name__ == "__main__":  # python -m minilocal.release still runs the tool
    sys.exit(_moved.main())

sys.modules[__name__] = _moved
