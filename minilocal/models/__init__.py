"""Model builders, each returning ``(blocks, heads)`` for a Plan.

    blocks, heads = models.cnn1d(Plan.greedy(4))
    net = LocalNet(blocks, heads, Plan.greedy(4))

``mlp`` (the MLP, twin of the NumPy core's), ``conv`` (1-D CNN and ResNet for MNIST-1D, 2-D
ResNet), ``lm`` (a tiny decoder-only Transformer); ``common`` holds what they share. The package
exports the builders by name, so ``models.mlp`` is the builder function.
"""
from .conv import ConvBlock1d, ResBlock, cnn1d, feature_head, resnet1d, resnet2d
from .lm import CausalSelfAttention, TransformerLayer, tiny_lm
from .mlp import Dense, mlp

__all__ = ["CausalSelfAttention", "ConvBlock1d", "Dense", "ResBlock", "TransformerLayer", "cnn1d",
           "feature_head", "mlp", "resnet1d", "resnet2d", "tiny_lm"]
