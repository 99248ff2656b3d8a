"""The old home of the language model, kept so ``minilocal.models_lm`` imports still work; the
code lives in ``minilocal.models.lm``."""
from .models.lm import CausalSelfAttention, Embedding, TransformerLayer, tiny_lm

__all__ = ["CausalSelfAttention", "Embedding", "TransformerLayer", "tiny_lm"]
