"""DoRA: weight decomposition around another delta (LoRA, LoHa, LoKr).

Two conventions, told apart by where the magnitude comes from:

- kohya / LyCORIS ``dora_scale``: ``W' = (W + dW) * m / (||W + dW|| + eps)`` where the norm is taken
  per output row when ``dora_scale`` has shape ``(out, 1, ...)`` and per input column when it has
  shape ``(1, in, ...)`` (the only way to tell the two apart). At user scale ``s`` the change is
  ``s * (W' - W)``: scale 0 is the base model exactly, scale 1 equals the reference, as ComfyUI and
  A1111 apply a strength (LyCORIS' own multiplier interpolates differently).
- PEFT ``lora_magnitude_vector`` (shape ``(out,)``): ``W' = m * (W + s * dW) / ||W + s * dW||`` per
  output channel, following PEFT's scaling at every scale.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from refiners_lora.deltas.base import WeightDelta
from refiners_lora.errors import LoraError


class DoraDelta(WeightDelta):
    """Weight decomposition of ``inner`` (its change at scale 1) with magnitude ``magnitude``."""

    algorithm = "dora"

    def __init__(self, inner: WeightDelta, magnitude: torch.Tensor, convention: str, scale: float = 1.0) -> None:
        super().__init__(inner.target, scale)
        if convention not in ("kohya", "peft"):
            raise LoraError(f"unknown DoRA convention {convention!r}")
        inner.rescale(1.0)
        self.inner = inner
        self.convention = convention
        shape = tuple(inner.target.weight.shape)
        out_channels, in_channels, ndim = shape[0], shape[1], len(shape)
        size = tuple(magnitude.shape)
        if convention == "peft":
            if magnitude.numel() != out_channels:
                raise LoraError(f"lora_magnitude_vector of shape {size} does not fit a weight of shape {shape}")
            self.per_output = True
            magnitude = magnitude.reshape(out_channels, *[1] * (ndim - 1))
        elif magnitude.numel() == out_channels and (size[0] == out_channels or magnitude.dim() == 1):
            self.per_output = True
            magnitude = magnitude.reshape(out_channels, *[1] * (ndim - 1))
        elif magnitude.numel() == in_channels and magnitude.dim() >= 2 and size[1] == in_channels:
            self.per_output = False
            magnitude = magnitude.reshape(1, in_channels, *[1] * (ndim - 2))
        else:
            raise LoraError(f"dora_scale of shape {size} does not fit a weight of shape {shape}")
        like = inner.target.weight
        self.magnitude = nn.Parameter(magnitude.to(device=like.device, dtype=like.dtype))
        self.__dict__["_magnitude_shape"] = size

    def _norm(self, weight: torch.Tensor) -> torch.Tensor:
        if self.per_output:
            return weight.flatten(1).norm(dim=1).reshape(weight.shape[0], *[1] * (weight.dim() - 1))
        columns = weight.transpose(0, 1).flatten(1).norm(dim=1)
        return columns.reshape(1, weight.shape[1], *[1] * (weight.dim() - 2))

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        """``W' - W`` at scale 1."""
        return self.delta_at(weight, 1.0)

    def delta_at(self, weight: torch.Tensor, scale: float) -> torch.Tensor:
        """``s * (W' - W)`` (kohya / LyCORIS) or ``m * (W + s dW) / ||W + s dW|| - W`` (PEFT)."""
        if self.convention == "kohya":
            merged = weight + self.inner.delta(weight)
            norm = self._norm(merged) + torch.finfo(merged.dtype).eps
            if torch.is_grad_enabled():
                return (merged * (self.magnitude / norm) - weight) * scale
            change = merged.mul_(self.magnitude / norm).sub_(weight)  # merged is a fresh sum: reused
            return change if scale == 1.0 else change.mul_(scale)
        merged = weight + self.inner.delta_at(weight, scale)
        if torch.is_grad_enabled():
            return merged * (self.magnitude / self._norm(merged).detach()) - weight
        return merged.mul_(self.magnitude / self._norm(merged)).sub_(weight)

    def state(self) -> dict[str, torch.Tensor]:
        """The inner delta's tensors plus ``dora_scale`` (kohya) or ``lora_magnitude_vector`` (PEFT)."""
        state = self.inner.state()
        magnitude = self.magnitude.detach().reshape(self.__dict__["_magnitude_shape"])
        state["dora_scale" if self.convention == "kohya" else "lora_magnitude_vector"] = magnitude
        return state

    @property
    def peft_only(self) -> bool:
        """A PEFT DoRA scales as PEFT does, which no kohya / LyCORIS file says."""
        return self.convention == "peft"

    def peft_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The inner LoRA's PEFT tensors plus ``lora_magnitude_vector`` and ``use_dora`` (PEFT DoRA only)."""
        inner = self.inner.peft_state()
        if self.convention != "peft" or inner is None:
            return None
        tensors, config = inner
        magnitude = self.magnitude.detach().reshape(self.__dict__["_magnitude_shape"])
        return {**tensors, "lora_magnitude_vector": magnitude}, {**config, "use_dora": True}

    def extra_repr(self) -> str:
        side = "per output" if self.per_output else "per input"
        return f"dora ({self.convention}, {side}) of {self.inner.algorithm}, scale={self.scale:g}" + (
            ", fused" if self.fused else ""
        )
