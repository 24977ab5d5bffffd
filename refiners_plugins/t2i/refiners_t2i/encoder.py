"""The T2I-Adapter network: condition image -> one feature map per level, built from refiners Chains.

``T2IEncoder`` = ``ResetFeatures``, ``PixelUnshuffle``, [``Conv2d`` (conv_in, full variants)], one
``T2ILevel`` per feature, ``UseContext`` returning the list of features. Each level is
[``AvgPool2d``], [``Conv2d`` in_conv], ``T2IResnet``..., [``Conv2d`` out_conv (light)], then
``CollectFeature``, which appends the level's output to the encoder's ``t2i_encoder.features`` context.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.nn import functional as F

from refiners_core import Chain, Contexts, Conv2d, ReLU, Residual, SetContext, UseContext
from refiners_core.context import provider_of
from refiners_core.module import Module
from refiners_core.module_map import load_by_module_map
from refiners_t2i.config import T2IConfig

__all__ = [
    "AvgPool2d",
    "CollectFeature",
    "PixelUnshuffle",
    "ResetFeatures",
    "T2IEncoder",
    "T2ILevel",
    "T2IResnet",
    "diffusers_module_map",
]

ENCODER_CONTEXT = "t2i_encoder"
FEATURES_KEY = "features"

Device = torch.device | str | None


class PixelUnshuffle(Module):
    """``[B, C, H*f, W*f] -> [B, C*f*f, H, W]`` (``torch.nn.functional.pixel_unshuffle``)."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(x, self.factor)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class AvgPool2d(Module):
    """2x2 average pooling, stride 2, rounding odd sizes up (``ceil_mode=True``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)


class T2IResnet(Residual):
    """``x + Conv2d_2(ReLU(Conv2d_1(x)))``: 3x3 then 1x1 (full variants) or 3x3 (light) convolutions."""

    def __init__(self, channels: int, second_kernel: int, device: Device = None, dtype: torch.dtype | None = None):
        super().__init__(
            Conv2d(channels, channels, 3, padding=1, device=device, dtype=dtype),
            ReLU(),
            Conv2d(channels, channels, second_kernel, padding=second_kernel // 2, device=device, dtype=dtype),
        )


def _append(features: list[torch.Tensor], x: torch.Tensor) -> None:
    features.append(x)


class CollectFeature(SetContext):
    """Appends its input to ``t2i_encoder.features`` and passes it on."""

    def __init__(self) -> None:
        super().__init__(ENCODER_CONTEXT, FEATURES_KEY, callback=_append)


class ResetFeatures(Module):
    """Passes its input through after emptying ``t2i_encoder.features``: the first layer of an encoder."""

    def forward(self, x: Any) -> Any:
        provider_of(self).set_context(ENCODER_CONTEXT, {FEATURES_KEY: []})
        return x


class T2ILevel(Chain):
    """One level: [``AvgPool2d``], [``Conv2d`` in_conv], ``T2IResnet``..., [``Conv2d`` out_conv], ``CollectFeature``."""


def _level(config: T2IConfig, index: int, device: Device, dtype: torch.dtype | None) -> T2ILevel:
    spec = config.levels()[index]
    layers: list[Module] = [AvgPool2d()] if spec.down else []
    if config.is_light:
        middle = spec.out_channels // 4
        layers.append(Conv2d(spec.in_channels, middle, 1, device=device, dtype=dtype))
        layers += [T2IResnet(middle, 3, device=device, dtype=dtype) for _ in range(config.num_res_blocks)]
        layers.append(Conv2d(middle, spec.out_channels, 1, device=device, dtype=dtype))
    else:
        if spec.in_channels != spec.out_channels:
            layers.append(Conv2d(spec.in_channels, spec.out_channels, 1, device=device, dtype=dtype))
        layers += [T2IResnet(spec.out_channels, 1, device=device, dtype=dtype) for _ in range(config.num_res_blocks)]
    return T2ILevel(*layers, CollectFeature())


class T2IEncoder(Chain):
    """Condition image ``[B, in_channels, H, W]`` -> list of feature maps, one per level (diffusers ``T2IAdapter``).

    ``H`` and ``W`` must be multiples of ``config.downscale_factor``.
    """

    def __init__(self, config: T2IConfig, device: Device = None, dtype: torch.dtype | None = None) -> None:
        self.config = config
        stem: list[Module] = [ResetFeatures(), PixelUnshuffle(config.downscale_factor)]
        if not config.is_light:
            width = config.channels[0]
            stem.append(Conv2d(config.unshuffled_channels, width, 3, padding=1, device=device, dtype=dtype))
        levels = [_level(config, index, device, dtype) for index in range(len(config.levels()))]
        super().__init__(*stem, *levels, UseContext(ENCODER_CONTEXT, FEATURES_KEY))

    def init_context(self) -> Contexts:
        """``t2i_encoder.features``: the features of the current forward."""
        return {ENCODER_CONTEXT: {FEATURES_KEY: []}}


def diffusers_module_map(encoder: T2IEncoder, prefix: str = "adapter.") -> dict[str, torch.nn.Module]:
    """``{diffusers module name: our convolution}`` for every weighted layer of ``encoder``.

    diffusers names: ``adapter.conv_in``, ``adapter.body.{i}.in_conv``, ``adapter.body.{i}.resnets.{j}.block1``
    / ``block2``, ``adapter.body.{i}.out_conv`` (light).
    """
    table: dict[str, torch.nn.Module] = {}
    for conv in (child for child in encoder if isinstance(child, Conv2d)):
        table[f"{prefix}conv_in"] = conv
    for i, level in enumerate(child for child in encoder if isinstance(child, T2ILevel)):
        convs = [child for child in level if isinstance(child, Conv2d)]
        names = ["in_conv", "out_conv"] if encoder.config.is_light else ["in_conv"]
        for name, conv in zip(names, convs, strict=False):
            table[f"{prefix}body.{i}.{name}"] = conv
        for j, resnet in enumerate(child for child in level if isinstance(child, T2IResnet)):
            for block, conv in zip(("block1", "block2"), resnet.layers(Conv2d), strict=True):
                table[f"{prefix}body.{i}.resnets.{j}.{block}"] = conv
    return table


def load_diffusers_weights(encoder: T2IEncoder, state: Mapping[str, torch.Tensor], origin: str = "weights") -> None:
    """Load a diffusers-keyed state dict into ``encoder``: every key accounted for, shapes checked, all or nothing.

    On a ``meta`` encoder the tensors are adopted as they are (no copy): pass them on the target device/dtype.

    Raises:
        WeightsError: naming the missing, unexpected and misshapen keys (diffusers names) and ``origin``.
    """
    source = f"{origin} (T2I-Adapter {encoder.config.describe()})"
    load_by_module_map(encoder, diffusers_module_map(encoder), state, source=source)
