"""The old home of the vision models, kept so ``minilocal.models_vision`` imports still work;
the code lives in ``minilocal.models`` (``mlp``, ``conv``, ``common``)."""
from .models.common import DTYPES, check_plan, seeded
from .models.conv import (ConvBlock1d, ResBlock, as_channels, check_downsample, cnn1d,
                          default_downsample, feature_head, resnet1d, resnet2d)
from .models.mlp import ACTIVATIONS, Dense, mlp

__all__ = ["ACTIVATIONS", "DTYPES", "ConvBlock1d", "Dense", "ResBlock", "as_channels",
           "check_downsample", "check_plan", "cnn1d", "default_downsample", "feature_head", "mlp",
           "resnet1d", "resnet2d", "seeded"]
