"""Full weight difference: ``diff`` (shaped like the weight) and optionally ``diff_b`` for the bias."""

from __future__ import annotations

import torch
from torch import nn

from refiners_lora.deltas.base import WeightDelta, reshape_to
from refiners_lora.errors import LoraError


class FullDelta(WeightDelta):
    """A stored weight difference (LyCORIS ``full``)."""

    algorithm = "full"

    def __init__(self, target: nn.Module, diff: torch.Tensor, diff_b: torch.Tensor | None, scale: float = 1.0) -> None:
        super().__init__(target, scale)
        like = self.target.weight
        diff = reshape_to(diff, tuple(like.shape), "diff")
        self.diff = nn.Parameter(diff.to(device=like.device, dtype=like.dtype))
        self.diff_b: nn.Parameter | None = None
        if diff_b is not None:
            bias = self.target.bias
            if bias is None:
                raise LoraError("diff_b given for a layer without a bias")
            self.diff_b = nn.Parameter(reshape_to(diff_b, tuple(bias.shape), "diff_b").to(like))

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        """The stored ``diff``."""
        return self.diff.to(weight.dtype)

    def bias_delta(self) -> torch.Tensor | None:
        """The stored ``diff_b``."""
        return self.diff_b

    def state(self) -> dict[str, torch.Tensor]:
        """``diff`` (and ``diff_b``)."""
        state = {"diff": self.diff.detach()}
        if self.diff_b is not None:
            state["diff_b"] = self.diff_b.detach()
        return state
