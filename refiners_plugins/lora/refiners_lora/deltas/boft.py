"""BOFT: OFT whose rotation is a product of sparse "butterfly" stages.

``oft_blocks`` is ``(stages, blocks, size, size)``. Each stage turns every block ``Q`` into a Cayley
rotation ``R = (I + S)(I - S)^-1`` of ``S = Q - Q^T`` (when ``alpha``, the constraint, is positive,
all the ``S`` together are scaled down to norm ``alpha * out`` when above it). Stage ``i`` pairs the
output channels ``2^i * size / 2`` apart, rotates each group of ``size`` paired channels by its
block, and puts them back in place; the stages apply in order. ``W' = rescale * butterfly(W)``.
At user scale ``s`` the change is ``s * (W' - W)``, as for :mod:`refiners_lora.deltas.oft`.
"""

from __future__ import annotations

import torch
from torch import nn

from refiners_lora.deltas.base import WeightDelta
from refiners_lora.deltas.oft import constrained_cayley, rescale_parameter, rotation_state
from refiners_lora.errors import LoraError


class BoftDelta(WeightDelta):
    """BOFT of one layer (LyCORIS ``oft_blocks`` of four dimensions + ``rescale``)."""

    algorithm = "boft"

    def __init__(
        self,
        target: nn.Module,
        blocks: torch.Tensor,
        rescale: torch.Tensor | None,
        alpha: float | None,
        scale: float = 1.0,
    ) -> None:
        super().__init__(target, scale)
        shape = tuple(self.target.weight.shape)
        if (
            blocks.dim() != 4
            or blocks.shape[2] != blocks.shape[3]
            or blocks.shape[2] % 2
            or blocks.shape[1] * blocks.shape[2] != shape[0]
            or (shape[0] // blocks.shape[2]) < 2 ** (blocks.shape[0] - 1)
        ):
            raise LoraError(f"oft_blocks of shape {tuple(blocks.shape)} does not fit a weight of shape {shape}")
        like = self.target.weight
        self.oft_blocks = nn.Parameter(blocks.to(like))
        self.rescale_weight = rescale_parameter(self, rescale, shape, like)
        self.alpha = float(alpha or 0.0)

    def rotations(self) -> torch.Tensor:
        """The block rotations of every stage, ``(stages, blocks, size, size)``."""
        return constrained_cayley(self.oft_blocks, self.alpha, self.target.weight.shape[0])

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        """``rescale * butterfly(W) - W``."""
        _, count, size, _ = self.oft_blocks.shape
        rest = weight.shape[1:]
        rotated = weight
        for stage, rotation in enumerate(self.rotations().to(weight.dtype)):
            stride = 2**stage * size // 2
            # channels `stride` apart become neighbours, then each run of `size` is one block
            grouped = rotated.reshape(-1, 2, stride, *rest).transpose(1, 2).reshape(count, size, *rest)
            grouped = torch.einsum("k i j, k j ... -> k i ...", rotation, grouped)
            rotated = grouped.reshape(-1, stride, 2, *rest).transpose(1, 2).reshape(weight.shape)
        if self.rescale_weight is not None:
            rotated = rotated * self.rescale_weight.to(weight.dtype)
        return rotated - weight

    def state(self) -> dict[str, torch.Tensor]:
        """``oft_blocks``, ``alpha`` (and ``rescale``)."""
        return rotation_state(self, self.oft_blocks, self.alpha, self.rescale_weight)
