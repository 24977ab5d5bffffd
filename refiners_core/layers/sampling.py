"""Spatial up- and down-sampling."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from refiners_core.chain import Chain
from refiners_core.layers.conv import Conv2d
from refiners_core.module import Module


class Interpolate(Module):
    """Nearest-neighbour resize: to ``size`` when given as second input, else by ``scale_factor``."""

    def __init__(self, scale_factor: float = 2.0, mode: str = "nearest") -> None:
        super().__init__()
        self.scale_factor = scale_factor
        self.mode = mode

    def forward(self, x: torch.Tensor, size: torch.Size | tuple[int, int] | None = None) -> torch.Tensor:
        if size is not None:
            return F.interpolate(x, size=tuple(size)[-2:], mode=self.mode)
        return F.interpolate(x, scale_factor=self.scale_factor, mode=self.mode)

    def extra_repr(self) -> str:
        return f"scale_factor={self.scale_factor}, mode={self.mode!r}"


class Upsample(Chain):
    """Nearest x2 upsampling followed by an optional 3x3 convolution."""

    def __init__(
        self,
        channels: int,
        use_conv: bool = True,
        out_channels: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        layers: list[Module] = [Interpolate(scale_factor=2.0)]
        if use_conv:
            layers.append(Conv2d(channels, out_channels or channels, 3, padding=1, device=device, dtype=dtype))
        super().__init__(*layers)


class Downsample(Chain):
    """Stride-2 3x3 convolution (or 2x2 average pooling without conv)."""

    def __init__(
        self,
        channels: int,
        use_conv: bool = True,
        out_channels: int | None = None,
        padding: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if use_conv:
            super().__init__(
                Conv2d(channels, out_channels or channels, 3, stride=2, padding=padding, device=device, dtype=dtype)
            )
        else:
            from refiners_core.combinators import Lambda

            super().__init__(Lambda(lambda x: F.avg_pool2d(x, kernel_size=2, stride=2)))
