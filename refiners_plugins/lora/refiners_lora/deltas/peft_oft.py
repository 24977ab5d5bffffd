"""PEFT OFT: a block-diagonal orthogonal rotation of the weight's input features.

PEFT stores each block as the upper triangle of a skew-symmetric ``Q`` (``oft_R.weight``,
``(blocks, size * (size - 1) / 2)``, one row shared by all blocks with ``block_share``). The rotation
is the Cayley transform ``(I - Q)(I + Q)^-1``, or its truncated Neumann series
``I + 2Q + ... + 2Q^(n-2) + Q^(n-1)`` (``use_cayley_neumann``, ``n`` terms). The weight, flattened to
``(out, in * kernel)``, becomes ``W' = W R^T`` (PEFT's merged weight). At user scale ``s`` the change
is ``s * (W' - W)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from refiners_lora.deltas.base import WeightDelta, cayley
from refiners_lora.errors import LoraError


class PeftOftDelta(WeightDelta):
    """OFT of one layer as PEFT's ``OFTConfig`` writes it."""

    algorithm = "oft"

    def __init__(self, target: nn.Module, vectors: torch.Tensor, neumann_terms: int | None, scale: float = 1.0) -> None:
        super().__init__(target, scale)
        features = self.target.weight[0].numel()
        size = 1
        while size * (size - 1) // 2 < (vectors.shape[-1] if vectors.dim() == 2 else -1):
            size += 1
        if vectors.dim() != 2 or size * (size - 1) // 2 != vectors.shape[1] or features % size:
            raise LoraError(f"oft_R of shape {tuple(vectors.shape)} does not fit a weight of shape {self.weight_shape}")
        if vectors.shape[0] not in (1, features // size):
            raise LoraError(f"oft_R has {vectors.shape[0]} blocks, expected 1 or {features // size}")
        self.size, self.count = size, features // size
        self.neumann_terms = neumann_terms
        self.oft_R = nn.Parameter(vectors.to(self.target.weight))

    def rotation(self) -> torch.Tensor:
        """The block rotations ``R``, ``(blocks, size, size)`` (a shared block repeated)."""
        vectors = self.oft_R
        rows, cols = torch.triu_indices(self.size, self.size, 1, device=vectors.device)
        upper = vectors.new_zeros(vectors.shape[0], self.size, self.size)
        upper[:, rows, cols] = vectors
        skew = upper - upper.transpose(1, 2)
        terms = self.neumann_terms
        if terms is None:
            rotation = cayley(skew)
        else:
            identity = torch.eye(self.size, device=vectors.device, dtype=vectors.dtype).expand_as(skew)
            # PEFT's series: 2Q for 2 terms; else doubled powers up to max(2, n - 2), then Q^max(3, n - 1)
            doubled, last = (min(terms - 1, 1), 0) if terms <= 2 else (max(2, terms - 2), max(3, terms - 1))
            rotation = identity.clone()
            power = identity
            for degree in range(1, max(doubled, last) + 1):
                power = power @ skew
                rotation = rotation + (2 * power if degree <= doubled else power)
        return rotation.expand(self.count, -1, -1)

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        """``W R^T - W`` on the weight flattened to ``(out, in * kernel)``."""
        flat = weight.reshape(weight.shape[0], self.count, self.size)
        rotated = torch.einsum("o k j, k i j -> o k i", flat, self.rotation().to(weight.dtype))
        return (rotated - flat).reshape(weight.shape)

    def state(self) -> dict[str, torch.Tensor]:
        """``oft_R.weight``."""
        return {"oft_R.weight": self.oft_R.detach()}

    @property
    def peft_only(self) -> bool:
        """PEFT's OFT rotates input features: only its own layout says so."""
        return True

    def peft_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """``oft_R.weight`` with the block size and the Cayley-Neumann setting."""
        config: dict[str, Any] = {"peft_type": "OFT", "oft_block_size": self.size}
        config["use_cayley_neumann"] = self.neumann_terms is not None
        if self.neumann_terms is not None:
            config["num_cayley_neumann_terms"] = self.neumann_terms
        return self.state(), config
