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

from refiners_lora.deltas.oft import OftDelta


class BoftDelta(OftDelta):
    """BOFT of one layer: a LyCORIS OFT (same keys, rotations, constraint and ``rescale``) whose
    ``oft_blocks`` have four dimensions, one butterfly stage each."""

    algorithm = "boft"

    @staticmethod
    def fits(blocks: torch.Tensor, shape: tuple[int, ...]) -> bool:
        """Whether ``oft_blocks`` ``(stages, blocks, size, size)`` fit a weight of ``shape``: an even block size,
        the blocks covering the output channels, and enough of them for every stage's pairing."""
        return (
            blocks.dim() == 4
            and blocks.shape[2] == blocks.shape[3]
            and blocks.shape[2] % 2 == 0
            and blocks.shape[1] * blocks.shape[2] == shape[0]
            and (shape[0] // blocks.shape[2]) >= 2 ** (blocks.shape[0] - 1)
        )

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        """``rescale * butterfly(W) - W``."""
        _, count, size, _ = self.oft_blocks.shape
        rest = weight.shape[1:]
        rotated = weight
        for stage, rotation in enumerate(self.rotation().to(weight.dtype)):
            stride = 2**stage * size // 2
            # channels `stride` apart become neighbours, then each run of `size` is one block
            grouped = rotated.reshape(-1, 2, stride, *rest).transpose(1, 2).reshape(count, size, *rest)
            grouped = torch.einsum("k i j, k j ... -> k i ...", rotation, grouped)
            rotated = grouped.reshape(-1, stride, 2, *rest).transpose(1, 2).reshape(weight.shape)
        if self.rescale_weight is not None:
            rotated = rotated * self.rescale_weight.to(weight.dtype)
        return rotated - weight
