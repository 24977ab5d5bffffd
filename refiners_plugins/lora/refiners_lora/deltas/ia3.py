"""(IA)^3: a learned per-channel rescaling of the weight, ``W * (1 + s * w)`` on its output channels
(or on its input channels when ``on_input`` is set)."""

from __future__ import annotations

import torch
from torch import nn

from refiners_lora.deltas.base import WeightDelta
from refiners_lora.errors import LoraError


class Ia3Delta(WeightDelta):
    """(IA)^3 of one layer (LyCORIS ``weight`` + ``on_input``)."""

    algorithm = "ia3"

    def __init__(self, target: nn.Module, weight: torch.Tensor, on_input: bool, scale: float = 1.0) -> None:
        super().__init__(target, scale)
        shape = tuple(self.target.weight.shape)
        channels = shape[1] if on_input else shape[0]
        if weight.numel() != channels:
            side = "input" if on_input else "output"
            raise LoraError(f"(IA)^3 weight of shape {tuple(weight.shape)} does not fit {channels} {side} channels")
        self.on_input = on_input
        self.__dict__["_file_shape"] = tuple(weight.shape)
        view = (1, channels, *[1] * (len(shape) - 2)) if on_input else (channels, *[1] * (len(shape) - 1))
        self.weight = nn.Parameter(weight.reshape(view).to(self.target.weight))

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        """``W * w`` along the scaled channels."""
        return weight * self.weight.to(weight.dtype)

    def state(self) -> dict[str, torch.Tensor]:
        """``weight`` and ``on_input``."""
        return {
            "weight": self.weight.detach().reshape(self.__dict__["_file_shape"]),
            "on_input": torch.tensor(int(self.on_input)),
        }
