"""A tiny decoder-only Transformer (character LM) as ``(blocks, heads)`` for a Plan, nanoGPT style.

Block 0 = token + position embedding, then a Transformer layer; blocks 1..L-1 are Transformer
layers (pre-LayerNorm, causal self-attention, MLP). Each head is LayerNorm + Linear(d_model, vocab),
*not* tied to the token embedding: a tied head would let every local loss train block 0's
embedding, and the losses would no longer be local.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..plan import Plan
from ..validate import check_int
from .common import check_plan, seeded


class CausalSelfAttention(nn.Module):
    """Multi-head attention where position t sees positions <= t. x: (B, T, C) -> (B, T, C)."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        H = self.n_heads
        q, k, v = self.qkv(x).split(C, dim=2)               # 3 x (B, T, C)
        q = q.view(B, T, H, C // H).transpose(1, 2)         # (B, H, T, C/H)
        k = k.view(B, T, H, C // H).transpose(1, 2)         # (B, H, T, C/H)
        v = v.view(B, T, H, C // H).transpose(1, 2)         # (B, H, T, C/H)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, C/H)
        y = y.transpose(1, 2).reshape(B, T, C)              # (B, T, C): heads side by side
        return self.proj(y)


class TransformerLayer(nn.Module):
    """x + attn(ln(x)), then x + mlp(ln(x)) with a 4x wide GELU MLP. x: (B, T, C) -> (B, T, C)."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(),
                                 nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Embedding(nn.Module):
    """Token + learned position embedding. idx: (B, T) int64 with T <= block_size -> (B, T, C)."""

    def __init__(self, vocab_size: int, d_model: int, block_size: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(block_size, d_model)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.dim() != 2 or idx.is_floating_point():
            raise ValueError(f"tiny_lm: input must be token ids of shape (B, T) and an integer "
                             f"dtype, got shape {tuple(idx.shape)} and dtype {idx.dtype}")
        T = idx.shape[1]
        if T > self.pos.num_embeddings:
            raise ValueError(f"tiny_lm: sequence length {T} exceeds block_size "
                             f"{self.pos.num_embeddings}; cut the input or build with a larger "
                             f"block_size")
        positions = torch.arange(T, device=idx.device)      # (T,)
        return self.tok(idx) + self.pos(positions)          # (B, T, C) + (T, C)


def _init_weights(module):
    """nanoGPT's init: N(0, 0.02) weights, zero biases; small weights keep early logits calm."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def tiny_lm(plan: Plan, vocab_size: int, n_blocks: int | None = None, d_model: int = 64,
            n_heads: int = 4, block_size: int = 64, seed: int = 0,
            dtype: torch.dtype = torch.float32) -> tuple[list[nn.Module], list[nn.Module]]:
    """Causal character LM: idx (B, T) int64 -> every head gives logits (B, T, vocab_size).

    Block 0: Embedding (token + position, T <= block_size) then a TransformerLayer; blocks
    1..L-1: TransformerLayer, each (B, T, d_model) -> (B, T, d_model). Head s: LayerNorm(d_model) +
    Linear(d_model, vocab_size), its own weights (untied from the embedding) so it stays local.
    Targets y: (B, T), the input shifted by one; LocalNet's cross_entropy flattens (B, T, V).
    """
    where = "tiny_lm"
    check_plan(where, plan, n_blocks)
    for name, value in (("vocab_size", vocab_size), ("d_model", d_model), ("n_heads", n_heads),
                        ("block_size", block_size)):
        check_int(where, name, value, 1)
    if d_model % n_heads:
        raise ValueError(f"{where}: d_model ({d_model}) must be divisible by n_heads ({n_heads}) "
                         f"so each head gets d_model / n_heads, e.g. d_model=64, n_heads=4")

    def build():
        blocks = [nn.Sequential(Embedding(vocab_size, d_model, block_size),
                                TransformerLayer(d_model, n_heads))]
        blocks += [TransformerLayer(d_model, n_heads) for _ in range(plan.n_blocks - 1)]
        heads = [nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, vocab_size))
                 for _ in plan.stages]
        for module in [*blocks, *heads]:
            module.apply(_init_weights)
        return blocks, heads
    return seeded(where, seed, dtype, build)
