"""Fully connected layer."""

from __future__ import annotations

import torch
from torch import nn

from refiners_core.module import SkipInitOnMeta, WeightedModule


class Linear(SkipInitOnMeta, nn.Linear, WeightedModule):
    """``y = x W^T + b`` (``torch.nn.Linear``) as a refiners leaf."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
