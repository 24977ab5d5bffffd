"""OFT: a block-diagonal orthogonal rotation of the weight's output channels.

Each block ``Q`` (``oft_blocks``, ``(blocks, size, size)``) gives the skew-symmetric ``S = Q - Q^T``
and the Cayley rotation ``R = (I + S)(I - S)^-1``; when ``alpha`` (the constraint) is positive, ``S`` is
scaled down to norm ``alpha * out`` when above it. ``W' = R^T W`` blockwise, times ``rescale`` per
output channel when given. At user scale ``s`` the change is ``s * (W' - W)``.
"""

from __future__ import annotations

import torch
from torch import nn

from refiners_lora.deltas.base import WeightDelta, cayley
from refiners_lora.errors import LoraError


class OftDelta(WeightDelta):
    """OFT of one layer (LyCORIS ``oft_blocks`` + ``rescale``)."""

    algorithm = "oft"

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
        if not self.fits(blocks, shape):
            raise LoraError(f"oft_blocks of shape {tuple(blocks.shape)} does not fit a weight of shape {shape}")
        like = self.target.weight
        self.oft_blocks = nn.Parameter(blocks.to(like))
        self.rescale_weight = rescale_parameter(self, rescale, shape, like)
        self.alpha = float(alpha or 0.0)

    @staticmethod
    def fits(blocks: torch.Tensor, shape: tuple[int, ...]) -> bool:
        """Whether ``oft_blocks`` of this shape fit a weight of ``shape``: ``(blocks, size, size)`` covering the
        output channels."""
        return (
            blocks.dim() == 3 and blocks.shape[1] == blocks.shape[2] and blocks.shape[0] * blocks.shape[1] == shape[0]
        )

    def rotation(self) -> torch.Tensor:
        """The block rotations ``R``, shaped like ``oft_blocks``."""
        return constrained_cayley(self.oft_blocks, self.alpha, self.target.weight.shape[0])

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        """``rescale * R^T W - W`` blockwise."""
        count, size, _ = self.oft_blocks.shape
        identity = torch.eye(size, device=weight.device, dtype=weight.dtype)
        grouped = weight.reshape(count, size, *weight.shape[1:])
        change = torch.einsum("k n m, k n ... -> k m ...", self.rotation().to(weight.dtype) - identity, grouped)
        change = change.reshape(weight.shape)
        if self.rescale_weight is not None:
            rescale = self.rescale_weight.to(weight.dtype)
            change = rescale * change + (rescale - 1) * weight
        return change

    def state(self) -> dict[str, torch.Tensor]:
        """``oft_blocks``, ``alpha`` (and ``rescale``, in the shape it was read in)."""
        state = {"oft_blocks": self.oft_blocks.detach(), "alpha": torch.tensor(self.alpha)}
        if self.rescale_weight is not None:
            state["rescale"] = self.rescale_weight.detach().reshape(self.__dict__["_rescale_shape"])
        return state


def constrained_cayley(blocks: torch.Tensor, alpha: float, out_channels: int) -> torch.Tensor:
    """The Cayley rotations ``(I + S)(I - S)^-1`` of ``S = Q - Q^T`` for LyCORIS blocks ``Q`` ``(..., n, n)``;
    with ``alpha`` positive, all the ``S`` together are first scaled down to norm ``alpha * out_channels``
    when above it."""
    skew = blocks - blocks.transpose(-1, -2)
    constraint = alpha * out_channels
    if constraint > 0:
        norm = torch.norm(skew) + 1e-8
        if norm > constraint:
            skew = skew * constraint / norm
    return cayley(-skew)


def rescale_parameter(
    delta: nn.Module, rescale: torch.Tensor | None, shape: tuple[int, ...], like: torch.Tensor
) -> nn.Parameter | None:
    """The per-output-channel ``rescale`` of an OFT/BOFT file as a parameter broadcasting over ``shape``
    (``None`` without one); records its stored shape on ``delta`` so that saving writes it back as read."""
    if rescale is None:
        return None
    if rescale.numel() != shape[0]:
        raise LoraError(f"rescale of shape {tuple(rescale.shape)} does not fit {shape[0]} output channels")
    delta.__dict__["_rescale_shape"] = tuple(rescale.shape)
    return nn.Parameter(rescale.reshape(shape[0], *[1] * (len(shape) - 1)).to(like))
