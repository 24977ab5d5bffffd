"""Where a T2I-Adapter's features enter a refiners-sd UNet, and the small layers that add them.

Following diffusers' ``down_intrablock_additional_residuals``, feature ``i`` is added at the end of
down block ``i`` (``unet.down_block_end(i)``), right before the skip connection is recorded, so the
skip receives it too:

- a block with cross-attention: after its last resnet/attention pair, before its downsampler;
- a block without attention: after its last layer (its downsampler, if it has one).

If features are left once every down block has one, the next one is added to the middle block's
output when its shape matches (SDXL adapters), right before the middle-block residual
(``AddResidual``) that a ControlNet fills. Remaining features are unused, as in diffusers.

Each point is a :class:`T2IFeatureAdapter` wrapping the skip's ``ResidualAccumulator`` (or the
UNet's ``AddResidual``): ``T2IFeature`` (``x + scale * features[index]``) then the wrapped layer.
These layers hold no parameters, so the UNet's state-dict keys never change.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from refiners_sd.unet.config import UNetConfig
from refiners_sd.unet.layers import AddResidual, ResidualAccumulator, UseResidual
from refiners_sd.unet.model import UNet
from torch import nn

from refiners_core import Adapter, Chain, Identity, Multiply, Sum, UseContext
from refiners_core.errors import AdapterError, ContextError
from refiners_t2i.config import T2IConfig

__all__ = [
    "T2I_CONTEXT",
    "InjectionPoint",
    "T2IFeature",
    "T2IFeatureAdapter",
    "UseT2IFeature",
    "injection_points",
    "target_layer",
]

T2I_CONTEXT = "t2i_adapter"


class InjectionPoint(NamedTuple):
    """Feature ``feature`` goes to down block ``block`` (``None``: the middle block output)."""

    feature: int
    block: int | None

    def describe(self) -> str:
        """``"down block 2"`` or ``"middle block"``."""
        return "middle block" if self.block is None else f"down block {self.block}"


def _slots(config: UNetConfig) -> list[tuple[int, int]]:
    """``(channels, stride vs the latents)`` at each down-block end, then at the middle block."""
    channels, last = config.block_out_channels, config.num_blocks - 1
    slots = []
    for block in range(config.num_blocks):
        after_downsampler = not config.has_attention(block) and block < last
        slots.append((channels[block], 2 ** (block + 1 if after_downsampler else block)))
    slots.append((channels[-1], 2**last))
    return slots


def injection_points(t2i: T2IConfig, unet: UNetConfig) -> list[InjectionPoint]:
    """Match the adapter's features to the UNet's down blocks (and middle block), checking they fit.

    Channels must be equal, and the features' relative resolutions must follow the UNet's (a feature
    twice as coarse as feature 0 must meet a block twice as coarse as block 0).

    Raises:
        AdapterError: naming every feature that does not fit its block.
    """
    features = list(zip(t2i.feature_channels, t2i.feature_strides, strict=True))
    slots = _slots(unet)
    blocks = unet.num_blocks
    base_feature, base_slot = features[0][1], slots[0][1]

    def fits(feature: tuple[int, int], slot: tuple[int, int]) -> bool:
        return feature[0] == slot[0] and feature[1] * base_slot == slot[1] * base_feature

    points, problems = [], []
    for index in range(min(len(features), blocks)):
        if fits(features[index], slots[index]):
            points.append(InjectionPoint(index, index))
        else:
            (channels, stride), (want_channels, want_stride) = features[index], slots[index]
            problems.append(
                f"feature {index}: {channels} channels at 1/{stride} of the image, "
                f"down block {index}: {want_channels} channels at 1/{want_stride} of the latents"
            )
    if problems:
        raise AdapterError(
            f"this T2I-Adapter {t2i.describe()} does not fit the {unet.topology} UNet with block_out_channels "
            f"{list(unet.block_out_channels)} (each feature needs its block's channels, and the features' "
            f"resolutions must scale like the blocks'; feature 0 is at 1/{base_feature} of the image, block 0 at "
            f"1/{base_slot} of the latents): " + "; ".join(problems)
        )
    if len(features) > blocks and fits(features[blocks], slots[blocks]):
        points.append(InjectionPoint(blocks, None))
    return points


def target_layer(unet: UNet, point: InjectionPoint) -> nn.Module:
    """The layer a :class:`T2IFeatureAdapter` wraps for ``point``: the skip's ``ResidualAccumulator`` at the
    end of the down block, or the UNet's middle-block ``AddResidual``."""
    if point.block is None:
        last = unet.num_residuals - 1
        middle = [layer for layer in unet.layers(AddResidual) if layer.ensure_find(UseResidual).n == last]
        if len(middle) != 1:
            raise AdapterError(f"expected one middle-block AddResidual in the UNet, found {len(middle)}")
        return middle[0]
    accumulators = list(unet.down_block_end(point.block).layers(ResidualAccumulator))
    if not accumulators:
        raise AdapterError(f"no ResidualAccumulator at the end of down block {point.block}")
    return accumulators[-1]


def _fit_batch(feature: torch.Tensor, batch: int) -> torch.Tensor | None:
    if feature.shape[0] in (batch, 1):
        return feature
    if batch % feature.shape[0] == 0:  # e.g. classifier-free guidance: [negative batch; positive batch]
        return feature.repeat(batch // feature.shape[0], *([1] * (feature.dim() - 1)))
    return None


class UseT2IFeature(UseContext):
    """Returns feature ``index`` of the T2I-Adapter ``key`` (context ``t2i_adapter``), fitted to the input's batch.

    A feature of batch 1 broadcasts; a batch that divides the input's is tiled (``[f; f]`` for classifier-free
    guidance, as diffusers pipelines do). Spatial shape and channels must match the input exactly.
    """

    def __init__(self, name: str, index: int, where: str) -> None:
        super().__init__(T2I_CONTEXT, name)
        self.index = index
        self.where = where

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            features = self.read()
        except ContextError:
            raise ContextError(
                f"T2I-Adapter {self.key!r} has no condition: call adapter.set_condition(image) before running the UNet"
            ) from None
        feature = features[self.index]
        fitted = _fit_batch(feature, x.shape[0])
        if fitted is None or feature.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"T2I-Adapter {self.key!r}: feature {self.index} has shape {list(feature.shape)} but the "
                f"{self.where} output is {list(x.shape)}; the condition image must be the latents' size times the "
                "VAE factor (8), and its batch 1, the latents' batch, or a divisor of it"
            )
        return fitted

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, index={self.index}"


class T2IFeature(Sum):
    """``x + scale * feature``: the sum of ``Identity`` and ``Chain(UseT2IFeature, Multiply(scale))``.

    ``x`` comes first so the result keeps its memory layout (as diffusers' ``hidden_states + feature``):
    with ``scale=0`` the UNet's output is then bit-identical to the bare UNet's.
    """

    def __init__(self, name: str, index: int, scale: float, where: str) -> None:
        super().__init__(Identity(), Chain(UseT2IFeature(name, index, where), Multiply(scale)))

    @property
    def scale(self) -> float:
        """The feature's multiplier."""
        return self.ensure_find(Multiply).scale

    @scale.setter
    def scale(self, value: float) -> None:
        self.ensure_find(Multiply).scale = float(value)


class T2IFeatureAdapter(Chain, Adapter[nn.Module]):
    """Takes the place of ``target`` (a ``ResidualAccumulator`` or ``AddResidual``): ``T2IFeature``, then ``target``."""

    def __init__(self, target: nn.Module, name: str, index: int, scale: float, where: str) -> None:
        with self.setup_adapter(target):
            super().__init__(T2IFeature(name, index, scale, where), target)

    @property
    def feature(self) -> T2IFeature:
        """The ``T2IFeature`` layer."""
        return self.ensure_find(T2IFeature)


def injected_names(unet: Any) -> list[str]:
    """Names of the T2I-Adapters currently injected into ``unet``."""
    names: list[str] = []
    for layer in unet.layers(UseT2IFeature):
        if layer.key not in names:
            names.append(layer.key)
    return names
