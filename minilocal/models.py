"""Model builders, each returning ``(blocks, heads)`` for a Plan; see models_vision and models_lm.

    blocks, heads = models.cnn1d(Plan.greedy(4))
    net = LocalNet(blocks, heads, Plan.greedy(4))
"""
from .models_lm import CausalSelfAttention, TransformerLayer, tiny_lm
from .models_vision import ConvBlock1d, Dense, ResBlock, cnn1d, mlp, resnet1d, resnet2d

__all__ = ["CausalSelfAttention", "ConvBlock1d", "Dense", "ResBlock", "TransformerLayer", "cnn1d",
           "mlp", "resnet1d", "resnet2d", "tiny_lm"]
