"""Multi-head attention split into separate layers adapters can wrap: projections, the attention op, output."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from refiners_core.chain import Chain
from refiners_core.combinators import Distribute, Parallel
from refiners_core.layers.basics import Identity
from refiners_core.layers.linear import Linear
from refiners_core.module import Module


class ScaledDotProductAttention(Module):
    """Attention op on ``(query, key, value)`` of shape ``[B, L, C]``: splits heads, runs
    ``torch.nn.functional.scaled_dot_product_attention``, merges heads back to ``[B, Lq, C]``."""

    def __init__(self, num_heads: int = 1, is_causal: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.is_causal = is_causal

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, L, C] -> [B, heads, L, C / heads]``."""
        batch, length, channels = x.shape
        return x.view(batch, length, self.num_heads, channels // self.num_heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(
            self.split_heads(query), self.split_heads(key), self.split_heads(value), is_causal=self.is_causal
        )
        batch, _, length, _ = out.shape
        return out.transpose(1, 2).reshape(batch, length, -1)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}" + (", is_causal=True" if self.is_causal else "")


class Attention(Chain):
    """``(query, key, value)`` -> q/k/v Linear projections -> ScaledDotProductAttention -> output Linear."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int = 1,
        key_embedding_dim: int | None = None,
        value_embedding_dim: int | None = None,
        inner_dim: int | None = None,
        qkv_bias: bool = True,
        out_bias: bool = True,
        is_causal: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        inner = inner_dim or embedding_dim
        if inner % num_heads:
            raise ValueError(f"attention inner dimension {inner} is not divisible by num_heads={num_heads}")
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        super().__init__(
            Distribute(
                Linear(embedding_dim, inner, bias=qkv_bias, device=device, dtype=dtype),
                Linear(key_embedding_dim or embedding_dim, inner, bias=qkv_bias, device=device, dtype=dtype),
                Linear(value_embedding_dim or embedding_dim, inner, bias=qkv_bias, device=device, dtype=dtype),
            ),
            ScaledDotProductAttention(num_heads=num_heads, is_causal=is_causal),
            Linear(inner, embedding_dim, bias=out_bias, device=device, dtype=dtype),
        )


class SelfAttention(Chain):
    """Attention of ``x`` on itself: ``Parallel(Identity x3)`` feeding an :class:`Attention`."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int = 1,
        inner_dim: int | None = None,
        qkv_bias: bool = True,
        out_bias: bool = True,
        is_causal: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            Parallel(Identity(), Identity(), Identity()),
            Attention(
                embedding_dim,
                num_heads=num_heads,
                inner_dim=inner_dim,
                qkv_bias=qkv_bias,
                out_bias=out_bias,
                is_causal=is_causal,
                device=device,
                dtype=dtype,
            ),
        )
