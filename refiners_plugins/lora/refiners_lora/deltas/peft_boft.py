"""PEFT BOFT: OFT of the input features whose rotation is a product of butterfly stages.

PEFT stores ``boft_R`` as ``(stages, blocks, size, size)`` and ``boft_s`` as one scale per output
channel (``(out, 1)`` for linears, ``(1, out)`` for convolutions). Each block ``Q`` gives the
skew-symmetric ``S = (Q - Q^T) / 2`` and the Cayley rotation ``(I - S)(I + S)^-1``. Stage ``i`` permutes
the input features, rotates each run of ``size`` features by its block and permutes them back: within
every chunk of ``size * 2^i`` features, the half-blocks of ``size / 2`` features are reordered even
ones first, then odd ones (with a single stage there is no permutation). The stages apply in order to
every row of the weight flattened to ``(out, in * kernel)``, then the row is multiplied by its
``boft_s``: ``W' = s * W B^T`` (PEFT's merged weight, which is also its unmerged forward).

PEFT ignores scaling for BOFT; at user scale ``s`` refiners-lora applies ``s * (W' - W)``, as for
every OFT and BOFT file (scale 0 is the base model, scale 1 equals PEFT).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from refiners_lora.deltas.base import WeightDelta, cayley
from refiners_lora.errors import LoraError


def butterfly_permutation(features: int, size: int, stage: int) -> torch.Tensor:
    """The feature order of butterfly stage ``stage`` for blocks of ``size``: position ``j`` of the
    permuted features holds feature ``permutation[j]``."""
    half = size // 2
    groups = 2 ** (stage + 1)
    order = torch.cat([torch.arange(0, groups, 2), torch.arange(1, groups, 2)])
    within = (order[:, None] * half + torch.arange(half)).flatten()
    return (torch.arange(0, features, groups * half)[:, None] + within).flatten()


class PeftBoftDelta(WeightDelta):
    """BOFT of one layer as PEFT's ``BOFTConfig`` writes it (``boft_R``, ``boft_s``)."""

    algorithm = "boft"

    def __init__(self, target: nn.Module, blocks: torch.Tensor, scales: torch.Tensor, scale: float = 1.0) -> None:
        super().__init__(target, scale)
        shape = self.weight_shape
        features = self.target.weight[0].numel()
        if blocks.dim() != 4 or blocks.shape[2] != blocks.shape[3] or blocks.shape[1] * blocks.shape[2] != features:
            raise LoraError(f"boft_R of shape {tuple(blocks.shape)} does not fit a weight of shape {shape}")
        stages, count, size, _ = blocks.shape
        if stages > 1 and (size % 2 or count % 2 ** (stages - 1)):
            raise LoraError(
                f"boft_R of shape {tuple(blocks.shape)}: {stages} butterfly stages need an even block size and "
                f"a block count divisible by {2 ** (stages - 1)}"
            )
        if scales.numel() != shape[0]:
            raise LoraError(f"boft_s of shape {tuple(scales.shape)} does not fit {shape[0]} output channels")
        like = self.target.weight
        self.boft_R = nn.Parameter(blocks.to(like))
        self.boft_s = nn.Parameter(scales.to(like))
        orders = [butterfly_permutation(features, size, stage) for stage in range(stages)] if stages > 1 else []
        self.register_buffer("orders", torch.stack(orders) if orders else None, persistent=False)

    def rotations(self) -> torch.Tensor:
        """The block rotations of every stage, ``(stages, blocks, size, size)``."""
        blocks = self.boft_R
        return cayley(0.5 * (blocks - blocks.transpose(-1, -2)))

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        """``s * W B^T - W`` on the weight flattened to ``(out, in * kernel)``."""
        _, count, size, _ = self.boft_R.shape
        rows = weight.reshape(weight.shape[0], -1)
        rotated = rows
        orders = self.orders
        for stage, rotation in enumerate(self.rotations().to(weight.dtype)):
            order = orders[stage] if isinstance(orders, torch.Tensor) else None
            if order is not None:
                rotated = torch.empty_like(rotated).index_copy_(1, order, rotated)  # feature j -> order[j]
            blocks = rotated.reshape(rows.shape[0], count, size)
            rotated = torch.einsum("o k j, k i j -> o k i", blocks, rotation).reshape(rows.shape)
            if order is not None:
                rotated = rotated[:, order]
        rotated = rotated * self.boft_s.to(weight.dtype).reshape(-1, 1)
        return (rotated - rows).reshape(weight.shape)

    def state(self) -> dict[str, torch.Tensor]:
        """``boft_R`` and ``boft_s``."""
        return {"boft_R": self.boft_R.detach(), "boft_s": self.boft_s.detach()}

    @property
    def peft_only(self) -> bool:
        """PEFT's BOFT rotates input features: only its own layout says so."""
        return True

    def peft_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """``boft_R`` and ``boft_s`` with the block size and the number of butterfly stages."""
        stages, _, size, _ = self.boft_R.shape
        config = {"peft_type": "BOFT", "boft_block_size": size, "boft_block_num": 0}
        return self.state(), {**config, "boft_n_butterfly_factor": stages}
