"""Building blocks of the SD1.5 and SDXL UNets, composed from refiners Chains (constructors only).

Every block takes ``device`` and ``dtype`` and creates its parameters there directly, so a
full-size UNet builds on the ``meta`` device in a fraction of a second.
"""

from __future__ import annotations

import torch

from refiners_core import (
    GLU,
    Attention,
    Cat,
    Chain,
    Contiguous,
    Conv2d,
    Downsample,
    Flatten,
    GeLU,
    GroupNorm,
    Identity,
    Interpolate,
    LayerNorm,
    Linear,
    Parallel,
    Passthrough,
    Residual,
    SelfAttention,
    SetContext,
    SiLU,
    SpatialSize,
    Sum,
    Transpose,
    Unflatten,
    Unsqueeze,
    UseContext,
)
from refiners_sd.unet.layers import (
    ResidualAccumulator,
    SinusoidalEmbedding,
    UseResidual,
)

__all__ = [
    "AddTimestepEmbedding",
    "CrossAttention",
    "CrossAttentionBlock",
    "CrossAttentionBlock2d",
    "DownBlock",
    "DownBlocks",
    "DownLayer",
    "DownsampleLayer",
    "FeedForward",
    "InputConv",
    "MiddleBlock",
    "OutputBlock",
    "ResidualBlock",
    "TextTimeEmbedding",
    "TimestepEmbedding",
    "TimestepEncoder",
    "UpBlock",
    "UpBlocks",
    "UpLayer",
    "Upsampler",
]

Device = torch.device | str | None

DIFFUSION_CONTEXT = "diffusion"
TIMESTEP_EMBEDDING_KEY = "timestep_embedding"
CROSS_ATTENTION_CONTEXT = "cross_attention_block"
TEXT_EMBEDDING_KEY = "clip_text_embedding"


class TimestepEmbedding(Chain):
    """``diffusion.timestep`` -> sinusoidal features -> Linear -> SiLU -> Linear (diffusers ``time_embedding``)."""

    def __init__(
        self,
        sinusoidal_dim: int,
        embedding_dim: int,
        flip_sin_to_cos: bool = True,
        freq_shift: float = 0.0,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            Parallel(UseContext(DIFFUSION_CONTEXT, "timestep"), Identity()),
            SinusoidalEmbedding(sinusoidal_dim, flip_sin_to_cos, freq_shift),
            Linear(sinusoidal_dim, embedding_dim, device=device, dtype=dtype),
            SiLU(),
            Linear(embedding_dim, embedding_dim, device=device, dtype=dtype),
        )


class TextTimeEmbedding(Chain):
    """SDXL's extra conditioning (diffusers ``add_embedding``): pooled text embedding and sinusoidal
    features of ``diffusion.time_ids``, concatenated -> Linear -> SiLU -> Linear."""

    def __init__(
        self,
        time_ids_dim: int,
        input_dim: int,
        embedding_dim: int,
        flip_sin_to_cos: bool = True,
        freq_shift: float = 0.0,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            Parallel(
                UseContext(DIFFUSION_CONTEXT, "pooled_text_embedding"),
                Chain(
                    Parallel(UseContext(DIFFUSION_CONTEXT, "time_ids"), Identity()),
                    SinusoidalEmbedding(time_ids_dim, flip_sin_to_cos, freq_shift),
                    Flatten(start_dim=1),
                ),
            ),
            Cat(dim=-1),
            Linear(input_dim, embedding_dim, device=device, dtype=dtype),
            SiLU(),
            Linear(embedding_dim, embedding_dim, device=device, dtype=dtype),
        )


class TimestepEncoder(Passthrough):
    """Computes the timestep embedding once per forward into ``diffusion.timestep_embedding``.

    Holds a :class:`TimestepEmbedding`, or for SDXL a ``Sum`` of it and a :class:`TextTimeEmbedding`.
    """

    def __init__(self, embedding: Chain) -> None:
        super().__init__(embedding, SetContext(DIFFUSION_CONTEXT, TIMESTEP_EMBEDDING_KEY))


class AddTimestepEmbedding(Residual):
    """``x + Linear(SiLU(timestep_embedding))[:, :, None, None]``: the time conditioning of a resnet."""

    def __init__(
        self, embedding_dim: int, channels: int, device: Device = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__(
            UseContext(DIFFUSION_CONTEXT, TIMESTEP_EMBEDDING_KEY),
            SiLU(),
            Linear(embedding_dim, channels, device=device, dtype=dtype),
            Unsqueeze(-1),
            Unsqueeze(-1),
        )


class ResidualBlock(Sum):
    """A time-conditioned resnet (diffusers ``ResnetBlock2D``): ``shortcut(x) + main(x)``.

    Children: ``Chain`` (GroupNorm_1, SiLU_1, Conv2d_1, AddTimestepEmbedding, GroupNorm_2, SiLU_2,
    Conv2d_2) and the shortcut (``Identity``, or a 1x1 ``Conv2d`` when channels change).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        time_embedding_dim: int,
        num_groups: int = 32,
        eps: float = 1e-5,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        shortcut = (
            Identity()
            if in_channels == out_channels
            else Conv2d(in_channels, out_channels, 1, device=device, dtype=dtype)
        )
        super().__init__(
            Chain(
                GroupNorm(in_channels, num_groups, eps=eps, device=device, dtype=dtype),
                SiLU(),
                Conv2d(in_channels, out_channels, 3, padding=1, device=device, dtype=dtype),
                AddTimestepEmbedding(time_embedding_dim, out_channels, device=device, dtype=dtype),
                GroupNorm(out_channels, num_groups, eps=eps, device=device, dtype=dtype),
                SiLU(),
                Conv2d(out_channels, out_channels, 3, padding=1, device=device, dtype=dtype),
            ),
            shortcut,
        )


class CrossAttention(Attention):
    """The text cross-attention: ``(x, text, text)`` -> q/k/v ``Linear`` (``Distribute``) ->
    ``ScaledDotProductAttention`` -> output ``Linear``. A distinct class so that adapters (IP-Adapter)
    find exactly the cross-attention layers with ``unet.layers(CrossAttention)``."""


class FeedForward(Chain):
    """GEGLU feed-forward: Linear(dim, 8 dim) -> GLU(GeLU) -> Linear(4 dim, dim)."""

    def __init__(self, dim: int, mult: int = 4, device: Device = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(
            Linear(dim, dim * mult * 2, device=device, dtype=dtype),
            GLU(GeLU()),
            Linear(dim * mult, dim, device=device, dtype=dtype),
        )


class CrossAttentionBlock(Chain):
    """A transformer layer on tokens ``[B, L, C]`` (diffusers ``BasicTransformerBlock``).

    ``Residual_1``: LayerNorm -> ``SelfAttention``; ``Residual_2``: LayerNorm -> ``Parallel(Identity,
    UseContext(text) x2)`` -> :class:`CrossAttention`; ``Residual_3``: LayerNorm -> :class:`FeedForward`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        context_dim: int,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            Residual(
                LayerNorm(dim, device=device, dtype=dtype),
                SelfAttention(dim, num_heads=num_heads, qkv_bias=False, device=device, dtype=dtype),
            ),
            Residual(
                LayerNorm(dim, device=device, dtype=dtype),
                Parallel(
                    Identity(),
                    UseContext(CROSS_ATTENTION_CONTEXT, TEXT_EMBEDDING_KEY),
                    UseContext(CROSS_ATTENTION_CONTEXT, TEXT_EMBEDDING_KEY),
                ),
                CrossAttention(
                    dim,
                    num_heads=num_heads,
                    key_embedding_dim=context_dim,
                    value_embedding_dim=context_dim,
                    qkv_bias=False,
                    device=device,
                    dtype=dtype,
                ),
            ),
            Residual(
                LayerNorm(dim, device=device, dtype=dtype),
                FeedForward(dim, device=device, dtype=dtype),
            ),
        )


class CrossAttentionBlock2d(Residual):
    """Transformer on an image (diffusers ``Transformer2DModel``): ``x + proj_out(blocks(proj_in(norm(x))))``.

    Children: ``Parallel(Chain(GroupNorm, [Conv2d proj_in], Flatten, Transpose, [Linear_1 proj_in],
    CrossAttentionBlock..., [Linear_2 proj_out], Transpose), SpatialSize)``, ``Unflatten`` back to
    ``[B, C, H, W]``, ``Contiguous`` (the unflattened view is channels-last, which makes the next
    convolutions re-layout their weights on every call), and ``[Conv2d proj_out]``. Projections are 1x1
    convolutions, or Linear layers with ``use_linear_projection``.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int,
        context_dim: int,
        depth: int = 1,
        num_groups: int = 32,
        use_linear_projection: bool = False,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        inner = num_heads * (channels // num_heads)
        blocks = [CrossAttentionBlock(inner, num_heads, context_dim, device=device, dtype=dtype) for _ in range(depth)]
        if use_linear_projection:
            tokens = Chain(
                GroupNorm(channels, num_groups, eps=1e-6, device=device, dtype=dtype),
                Flatten(start_dim=2),
                Transpose(1, 2),
                Linear(channels, inner, device=device, dtype=dtype),
                *blocks,
                Linear(inner, channels, device=device, dtype=dtype),
                Transpose(1, 2),
            )
            super().__init__(Parallel(tokens, SpatialSize()), Unflatten(2), Contiguous())
        else:
            tokens = Chain(
                GroupNorm(channels, num_groups, eps=1e-6, device=device, dtype=dtype),
                Conv2d(channels, inner, 1, device=device, dtype=dtype),
                Flatten(start_dim=2),
                Transpose(1, 2),
                *blocks,
                Transpose(1, 2),
            )
            super().__init__(
                Parallel(tokens, SpatialSize()),
                Unflatten(2),
                Contiguous(),
                Conv2d(inner, channels, 1, device=device, dtype=dtype),
            )


class InputConv(Chain):
    """The input convolution (diffusers ``conv_in``) and the first skip connection, ``residuals[0]``."""

    def __init__(
        self, in_channels: int, channels: int, device: Device = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__(
            Conv2d(in_channels, channels, 3, padding=1, device=device, dtype=dtype),
            ResidualAccumulator(0),
        )


class DownLayer(Chain):
    """One resnet (and its cross-attention, if any) of a down block, then the skip ``ResidualAccumulator(n)``."""


class DownsampleLayer(Chain):
    """A down block's stride-2 downsampler, then its skip ``ResidualAccumulator(n)``."""

    def __init__(self, channels: int, n: int, device: Device = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(Downsample(channels, device=device, dtype=dtype), ResidualAccumulator(n))


class DownBlock(Chain):
    """A diffusers down block: ``DownLayer`` children, then a ``DownsampleLayer`` except for the last block."""


class DownBlocks(Chain):
    """The down path: ``InputConv`` then one :class:`DownBlock` per diffusers down block."""


class MiddleBlock(Chain):
    """The middle block (diffusers ``UNetMidBlock2DCrossAttn``): ResidualBlock, CrossAttentionBlock2d, ResidualBlock."""


class UpLayer(Chain):
    """One resnet of an up block: ``ResidualConcatenator(n)`` (skip concatenation), ResidualBlock, and
    the cross-attention if any."""


class Upsampler(Chain):
    """Nearest upsampling to the spatial size of skip ``residuals[n]`` (the next one the up path reads),
    then a 3x3 convolution. Matches diffusers for latents whose size is not a multiple of 2^n."""

    def __init__(self, channels: int, n: int, device: Device = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(
            Parallel(Identity(), Chain(UseResidual(n), SpatialSize())),
            Interpolate(),
            Conv2d(channels, channels, 3, padding=1, device=device, dtype=dtype),
        )


class UpBlock(Chain):
    """A diffusers up block: ``UpLayer`` children, then an ``Upsampler`` except for the last block."""


class UpBlocks(Chain):
    """The up path: one :class:`UpBlock` per diffusers up block."""


class OutputBlock(Chain):
    """GroupNorm -> SiLU -> 3x3 convolution (diffusers ``conv_norm_out`` and ``conv_out``)."""

    def __init__(
        self,
        channels: int,
        out_channels: int,
        num_groups: int = 32,
        eps: float = 1e-5,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            GroupNorm(channels, num_groups, eps=eps, device=device, dtype=dtype),
            SiLU(),
            Conv2d(channels, out_channels, 3, padding=1, device=device, dtype=dtype),
        )
