"""Normalisation layers."""

from __future__ import annotations

import torch
from torch import nn

from refiners_core.module import SkipInitOnMeta, WeightedModule


class LayerNorm(SkipInitOnMeta, nn.LayerNorm, WeightedModule):
    """Layer normalisation over the last dimension(s) (``torch.nn.LayerNorm``)."""

    def __init__(
        self,
        normalized_shape: int | list[int] | torch.Size,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            normalized_shape, eps=eps, elementwise_affine=elementwise_affine, bias=bias, device=device, dtype=dtype
        )


class GroupNorm(SkipInitOnMeta, nn.GroupNorm, WeightedModule):
    """Group normalisation over channels (``torch.nn.GroupNorm``); note the ``(channels, num_groups)`` order."""

    def __init__(
        self,
        channels: int,
        num_groups: int,
        eps: float = 1e-5,
        affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_groups=num_groups, num_channels=channels, eps=eps, affine=affine, device=device, dtype=dtype
        )
