"""The layers a ControlNet adds around its copy of the UNet encoder.

* :class:`UseCondition` reads the ControlNet's condition image from the ``controlnet`` context.
* :class:`ConditionEncoder` turns it into features added to the encoder's ``conv_in`` output.
* :class:`ControlResidual` is a zero convolution whose scaled output is added into ``unet.residuals[n]``.
"""

from __future__ import annotations

from typing import Any

import torch
from refiners_sd.unet.layers import ResidualAccumulator

from refiners_core import ContextError, Conv2d, Multiply, Passthrough, Residual, SiLU, UseContext
from refiners_core.module import Module

__all__ = [
    "CONTROLNET_CONTEXT",
    "ConditionEncoder",
    "ControlResidual",
    "FlipChannels",
    "SpatialMean",
    "UseCondition",
]

CONTROLNET_CONTEXT = "controlnet"

Device = torch.device | str | None


class UseCondition(UseContext):
    """Ignores the latents ``x`` it gets but checks against them, and returns ``controlnet[name]``: the condition
    image ``[B, C, H, W]``, ``downscale`` times the latent size, cast to the latents' device and dtype."""

    def __init__(self, name: str, downscale: int) -> None:
        super().__init__(CONTROLNET_CONTEXT, name)
        self.downscale = downscale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            condition = self.read()
        except ContextError:
            raise ContextError(
                f"ControlNet {self.key!r} has no condition: call set_condition(image) before running the UNet"
            ) from None
        expected = (x.shape[-2] * self.downscale, x.shape[-1] * self.downscale)
        if condition.dim() != 4 or tuple(condition.shape[-2:]) != expected:
            raise ValueError(
                f"ControlNet {self.key!r}: condition of shape {tuple(condition.shape)} does not fit latents "
                f"{tuple(x.shape)}: expected [B, C, {expected[0]}, {expected[1]}] ({self.downscale}x the latent size)"
            )
        return condition.to(device=x.device, dtype=x.dtype)

    def extra_repr(self) -> str:
        return f"name={self.key!r}, downscale={self.downscale}"


class FlipChannels(Module):
    """Reverses the channel order of ``[B, C, H, W]`` (BGR <-> RGB)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flip(x, dims=[1])


class SpatialMean(Module):
    """Averages ``[B, C, H, W]`` over space, keeping the dimensions: ``[B, C, 1, 1]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mean(x, dim=(2, 3), keepdim=True)


class ConditionEncoder(Residual):
    """``x + embedding(condition)`` (diffusers ``controlnet_cond_embedding``).

    Children: :class:`UseCondition`, ``[FlipChannels]`` for BGR models, ``Conv2d`` (conv_in), ``SiLU``,
    then per step a 3x3 ``Conv2d``, ``SiLU``, a stride-2 ``Conv2d``, ``SiLU``, and the output ``Conv2d``
    to the width of ``x``.
    """

    def __init__(
        self,
        name: str,
        out_channels: int,
        conditioning_channels: int = 3,
        channels: tuple[int, ...] = (16, 32, 96, 256),
        bgr: bool = False,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        layers: list[Any] = [UseCondition(name, 2 ** (len(channels) - 1))]
        if bgr:
            layers.append(FlipChannels())
        layers += [Conv2d(conditioning_channels, channels[0], 3, padding=1, device=device, dtype=dtype), SiLU()]
        for width, next_width in zip(channels[:-1], channels[1:], strict=True):
            layers += [
                Conv2d(width, width, 3, padding=1, device=device, dtype=dtype),
                SiLU(),
                Conv2d(width, next_width, 3, padding=1, stride=2, device=device, dtype=dtype),
                SiLU(),
            ]
        layers.append(Conv2d(channels[-1], out_channels, 3, padding=1, device=device, dtype=dtype))
        super().__init__(*layers)

    @property
    def convolutions(self) -> list[Conv2d]:
        """The convolutions in order: conv_in, the blocks, conv_out."""
        return [layer for layer in self if isinstance(layer, Conv2d)]


class ControlResidual(Passthrough):
    """Adds ``scale * zero_conv(x)`` into ``unet.residuals[n]``; returns ``x`` unchanged.

    Children: the 1x1 ``Conv2d`` (diffusers ``controlnet_down_blocks.n`` / ``controlnet_mid_block``), a
    ``Multiply`` holding the scale, ``[SpatialMean]`` for global-pool models, ``ResidualAccumulator(n)``.
    """

    def __init__(
        self,
        n: int,
        channels: int,
        scale: float = 1.0,
        global_pool: bool = False,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        layers: list[Any] = [Conv2d(channels, channels, 1, device=device, dtype=dtype), Multiply(scale)]
        if global_pool:
            layers.append(SpatialMean())
        super().__init__(*layers, ResidualAccumulator(n))
        self.n = n

    @property
    def convolution(self) -> Conv2d:
        """The zero convolution."""
        return self.ensure_find(Conv2d)

    @property
    def multiplier(self) -> Multiply:
        """The ``Multiply`` holding this residual's scale."""
        return self.ensure_find(Multiply)

    def extra_repr(self) -> str:
        return f"n={self.n}"
