"""Building blocks of the VAE: resnet blocks, spatial self-attention, and the down/up samplers."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from refiners_core import (
    Chain,
    Contiguous,
    Conv2d,
    Flatten,
    GroupNorm,
    Identity,
    Interpolate,
    Parallel,
    Residual,
    SelfAttention,
    SiLU,
    SpatialSize,
    Sum,
    Transpose,
    Unflatten,
)
from refiners_core.module import Module

__all__ = ["Downsample", "Pad", "Resnet", "SelfAttention2d", "Upsample"]

NORM_EPS = 1e-6


class Pad(Module):
    """Constant padding ``torch.nn.functional.pad(x, pad, value=value)`` (``pad`` as ``(left, right, top, bottom)``)."""

    def __init__(self, pad: tuple[int, ...], value: float = 0.0) -> None:
        super().__init__()
        self.pad = pad
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pad, mode="constant", value=self.value)

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class Resnet(Sum):
    """``shortcut(x) + conv(silu(norm(conv(silu(norm(x))))))``; the shortcut is a 1x1 conv when channels change."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_groups: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.in_channels = in_channels
        self.out_channels = out_channels
        shortcut: Module = (
            Identity()
            if in_channels == out_channels
            else Conv2d(in_channels, out_channels, 1, device=device, dtype=dtype)
        )
        super().__init__(
            shortcut,
            Chain(
                GroupNorm(in_channels, num_groups, eps=NORM_EPS, device=device, dtype=dtype),
                SiLU(),
                Conv2d(in_channels, out_channels, 3, padding=1, device=device, dtype=dtype),
                GroupNorm(out_channels, num_groups, eps=NORM_EPS, device=device, dtype=dtype),
                SiLU(),
                Conv2d(out_channels, out_channels, 3, padding=1, device=device, dtype=dtype),
            ),
        )


class SelfAttention2d(Residual):
    """``x + attention(norm(x))`` over the ``H * W`` positions of ``[B, C, H, W]`` (one head, C wide)."""

    def __init__(
        self,
        channels: int,
        num_groups: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            GroupNorm(channels, num_groups, eps=NORM_EPS, device=device, dtype=dtype),
            Parallel(
                Chain(
                    Flatten(start_dim=2),
                    Transpose(1, 2),
                    SelfAttention(channels, num_heads=1, device=device, dtype=dtype),
                    Transpose(1, 2),
                ),
                SpatialSize(),
            ),
            Unflatten(dim=2),
            Contiguous(),
        )


class Downsample(Chain):
    """Halves the resolution: pad one pixel right and bottom, then a stride-2 3x3 conv without padding."""

    def __init__(
        self, channels: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__(
            Pad((0, 1, 0, 1)),
            Conv2d(channels, channels, 3, stride=2, device=device, dtype=dtype),
        )


class Upsample(Chain):
    """Doubles the resolution: nearest-neighbour x2, then a 3x3 conv."""

    def __init__(
        self, channels: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__(
            Interpolate(scale_factor=2.0),
            Conv2d(channels, channels, 3, padding=1, device=device, dtype=dtype),
        )
