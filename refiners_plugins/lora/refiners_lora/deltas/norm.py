"""Norm: a change of a GroupNorm's or LayerNorm's affine weight and bias (LyCORIS ``w_norm``, ``b_norm``).

The layer computes ``n(x) * w + b`` with ``n`` its normalisation, so the change is ``s * w_norm`` to
the weight and ``s * b_norm`` to the bias, and the unfused residual is ``n(x) * s w_norm + s b_norm``:
the layer's own operation with the changes as weight and bias.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from refiners_lora.deltas.base import WeightDelta
from refiners_lora.errors import LoraError


class NormDelta(WeightDelta):
    """Norm-layer delta of one GroupNorm or LayerNorm with an affine weight."""

    algorithm = "norm"
    target_types: ClassVar[tuple[type[nn.Module], ...]] = (nn.GroupNorm, nn.LayerNorm)

    def __init__(
        self, target: nn.Module, w_norm: torch.Tensor, b_norm: torch.Tensor | None, scale: float = 1.0
    ) -> None:
        super().__init__(target, scale)
        norm = self.norm
        if norm.weight is None:
            raise LoraError(f"w_norm needs a {type(norm).__name__} with an affine weight")
        shape = tuple(norm.weight.shape)
        if w_norm.numel() != norm.weight.numel():
            raise LoraError(f"w_norm of shape {tuple(w_norm.shape)} does not fit a weight of shape {shape}")
        self.w_norm = nn.Parameter(w_norm.reshape(shape).to(norm.weight))
        self.b_norm: nn.Parameter | None = None
        if b_norm is not None:
            if norm.bias is None or b_norm.numel() != norm.bias.numel():
                raise LoraError(f"b_norm of shape {tuple(b_norm.shape)} does not fit this layer's bias")
            self.b_norm = nn.Parameter(b_norm.reshape(norm.bias.shape).to(norm.bias))

    @property
    def norm(self) -> nn.GroupNorm | nn.LayerNorm:
        """The normalisation layer this delta changes."""
        target = self.__dict__.get("_target")
        if not isinstance(target, nn.GroupNorm | nn.LayerNorm):
            raise LoraError(f"this {self.algorithm} delta is not bound to a GroupNorm or LayerNorm")
        return target

    def op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """The layer's normalisation with another affine weight and bias."""
        norm = self.norm
        if isinstance(norm, nn.GroupNorm):
            return F.group_norm(x, norm.num_groups, weight, bias, norm.eps)
        return F.layer_norm(x, norm.normalized_shape, weight, bias, norm.eps)

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        """``w_norm``."""
        return self.w_norm.to(weight.dtype)

    def bias_delta(self) -> torch.Tensor | None:
        """``b_norm``."""
        return self.b_norm

    def state(self) -> dict[str, torch.Tensor]:
        """``w_norm`` (and ``b_norm``)."""
        state = {"w_norm": self.w_norm.detach()}
        if self.b_norm is not None:
            state["b_norm"] = self.b_norm.detach()
        return state
