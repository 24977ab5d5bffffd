"""Image projections: CLIP image features -> image tokens ``[B, T, cross_attention_dim]`` for the UNet.

- :class:`ImageProjection` (IP-Adapter): ``image_embeds [B, D]`` -> Linear -> ``T`` tokens -> LayerNorm.
- :class:`PerceiverResampler` (IP-Adapter Plus): ``T`` learned queries attend to the penultimate
  hidden states ``[B, N, H]`` of the image encoder through a small perceiver.
- :class:`FullImageProjection` (IP-Adapter Full Face): every hidden state -> MLP -> LayerNorm.

Child names mirror the h94 files (see :func:`refiners_ip_adapter.formats.projection_module_map`).
"""

from __future__ import annotations

import torch
from torch import nn

from refiners_core import (
    Chain,
    Concatenate,
    GeLU,
    Identity,
    LayerNorm,
    Linear,
    Parallel,
    Reshape,
    Residual,
    ScaledDotProductAttention,
    SetContext,
    UseContext,
)
from refiners_core.context import Contexts
from refiners_core.module import Module, WeightedModule

__all__ = [
    "FullImageProjection",
    "ImageProjection",
    "LatentQueries",
    "PerceiverAttention",
    "PerceiverBlock",
    "PerceiverFeedForward",
    "PerceiverResampler",
    "SplitKeyValue",
]

Device = torch.device | str | None
RESAMPLER_CONTEXT = "perceiver_resampler"
PERCEIVER_HEAD_DIM = 64  # fixed by the published Resampler: heads = to_q width // 64


class ImageProjection(Chain):
    """``[B, D] -> Linear(D, T * C) -> [B, T, C] -> LayerNorm(C)`` (h94 ``proj``, ``norm``)."""

    def __init__(
        self,
        image_embed_dim: int,
        cross_attention_dim: int,
        num_tokens: int = 4,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.num_tokens = num_tokens
        super().__init__(
            Linear(image_embed_dim, num_tokens * cross_attention_dim, device=device, dtype=dtype),
            Reshape(num_tokens, cross_attention_dim),
            LayerNorm(cross_attention_dim, device=device, dtype=dtype),
        )


class FullImageProjection(Chain):
    """``[B, N, H] -> Linear(H, H) -> GeLU -> Linear(H, C) -> LayerNorm(C)``: one token per hidden state."""

    def __init__(
        self,
        image_embed_dim: int,
        cross_attention_dim: int,
        num_tokens: int = 257,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.num_tokens = num_tokens
        super().__init__(
            Linear(image_embed_dim, image_embed_dim, device=device, dtype=dtype),
            GeLU(),
            Linear(image_embed_dim, cross_attention_dim, device=device, dtype=dtype),
            LayerNorm(cross_attention_dim, device=device, dtype=dtype),
        )


class LatentQueries(WeightedModule):
    """The resampler's learned queries ``latents [1, T, H]``, repeated for each batch item of its input."""

    def __init__(self, num_queries: int, dim: int, device: Device = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim, device=device, dtype=dtype) / dim**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.latents.expand(x.shape[0], -1, -1)

    def extra_repr(self) -> str:
        return f"num_queries={self.latents.shape[1]}, dim={self.latents.shape[2]}"


class SplitKeyValue(Module):
    """``(query, key_value) -> (query, key, value)``: splits the fused ``to_kv`` output in two halves."""

    def forward(self, query: torch.Tensor, key_value: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key, value = key_value.chunk(2, dim=-1)
        return query, key, value


class PerceiverAttention(Chain):
    """Latents attend to ``[norm1(features), norm2(latents)]``; the query is ``norm2(latents)``.

    ``LayerNorm`` (norm2) -> ``Parallel(Linear to_q, Chain(Concatenate(features -> LayerNorm norm1,
    latents), Linear to_kv))`` -> ``SplitKeyValue`` -> ``ScaledDotProductAttention`` -> ``Linear`` (to_out).
    The features come from the ``perceiver_resampler`` context.
    """

    def __init__(self, dim: int, num_heads: int, device: Device = None, dtype: torch.dtype | None = None) -> None:
        inner = num_heads * PERCEIVER_HEAD_DIM
        super().__init__(
            LayerNorm(dim, device=device, dtype=dtype),
            Parallel(
                Linear(dim, inner, bias=False, device=device, dtype=dtype),
                Chain(
                    Concatenate(
                        Chain(UseContext(RESAMPLER_CONTEXT, "features"), LayerNorm(dim, device=device, dtype=dtype)),
                        Identity(),
                        dim=1,
                    ),
                    Linear(dim, 2 * inner, bias=False, device=device, dtype=dtype),
                ),
            ),
            SplitKeyValue(),
            ScaledDotProductAttention(num_heads=num_heads),
            Linear(inner, dim, bias=False, device=device, dtype=dtype),
        )


class PerceiverFeedForward(Chain):
    """``LayerNorm -> Linear(H, 4H) -> GeLU -> Linear(4H, H)``, no biases."""

    def __init__(self, dim: int, mult: int = 4, device: Device = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(
            LayerNorm(dim, device=device, dtype=dtype),
            Linear(dim, dim * mult, bias=False, device=device, dtype=dtype),
            GeLU(),
            Linear(dim * mult, dim, bias=False, device=device, dtype=dtype),
        )


class PerceiverBlock(Chain):
    """``latents + PerceiverAttention(latents)``, then ``latents + PerceiverFeedForward(latents)``."""

    def __init__(self, dim: int, num_heads: int, device: Device = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(
            Residual(PerceiverAttention(dim, num_heads, device=device, dtype=dtype)),
            Residual(PerceiverFeedForward(dim, device=device, dtype=dtype)),
        )


class PerceiverResampler(Chain):
    """IP-Adapter Plus's image projection: ``[B, N, E] -> [B, T, C]``.

    ``Linear`` (proj_in, ``E -> H``) -> ``SetContext(features)`` -> ``LatentQueries`` (``T`` queries) ->
    ``PerceiverBlock x depth`` -> ``Linear`` (proj_out, ``H -> C``) -> ``LayerNorm`` (norm_out).
    """

    def __init__(
        self,
        image_embed_dim: int,
        cross_attention_dim: int,
        num_tokens: int = 16,
        hidden_dim: int = 768,
        depth: int = 4,
        num_heads: int = 12,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.num_tokens = num_tokens
        super().__init__(
            Linear(image_embed_dim, hidden_dim, device=device, dtype=dtype),
            SetContext(RESAMPLER_CONTEXT, "features"),
            LatentQueries(num_tokens, hidden_dim, device=device, dtype=dtype),
            *(PerceiverBlock(hidden_dim, num_heads, device=device, dtype=dtype) for _ in range(depth)),
            Linear(hidden_dim, cross_attention_dim, device=device, dtype=dtype),
            LayerNorm(cross_attention_dim, device=device, dtype=dtype),
        )

    def init_context(self) -> Contexts:
        return {RESAMPLER_CONTEXT: {"features": None}}

    @property
    def blocks(self) -> list[PerceiverBlock]:
        """The perceiver blocks in order."""
        return [child for child in self if isinstance(child, PerceiverBlock)]
