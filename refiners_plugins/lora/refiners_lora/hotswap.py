"""LoRAs padded to a fixed maximum rank, whose weights can be replaced in place (hot-swap) without
changing any shape, Python attribute or module: a ``torch.compile``-d model keeps its graphs.

The factor ``scale * alpha / rank`` lives in a tensor buffer, so a new file's alpha and rank are a copy
too; layers a new file does not touch get zero weights.
"""

from __future__ import annotations

import torch
from torch import nn

from refiners_lora.errors import LoraError
from refiners_lora.layers import Conv2dLora, LinearLora, Lora


class PaddedLora(Lora):
    """A plain LoRA (Linear or LoCon) of rank ``max_rank`` holding a LoRA of any rank up to it."""

    algorithm = "lora"

    @classmethod
    def empty(cls, target: nn.Module, max_rank: int, scale: float = 1.0) -> PaddedLora:
        """A zero LoRA of rank ``max_rank`` for ``target`` (no effect until :meth:`load` is called)."""
        if max_rank <= 0:
            raise LoraError(f"max_rank must be positive, got {max_rank}")
        if isinstance(target, nn.Linear):
            base: Lora = LinearLora.for_target(target, max_rank, scale=scale)
        elif isinstance(target, nn.Conv2d):
            base = Conv2dLora.for_target(target, max_rank, scale=scale)
        else:
            raise LoraError(f"LoRA targets must be Linear or Conv2d layers, not {type(target).__name__}")
        lora = cls(base.down, base.up, max_rank, float(max_rank), scale)
        lora.register_buffer("factor", torch.zeros((), device=target.weight.device, dtype=target.weight.dtype))
        with torch.no_grad():
            lora.down.weight.zero_()  # type: ignore[union-attr, operator]
        lora.bind(target)
        lora.ratio = 0.0
        return lora

    @property
    def effective_scale(self) -> float:
        """The factor applied to ``up(down(x))``: ``scale * alpha / rank`` of the loaded LoRA."""
        return float(self.factor)  # type: ignore[arg-type]

    @property
    def active(self) -> bool:
        """Always part of the forward (scale 0 is a zero factor, not a different graph)."""
        return True

    def check(self, down: torch.Tensor, up: torch.Tensor) -> None:
        """Raise a :class:`LoraError` when ``down``/``up`` cannot be loaded here."""
        rank = int(down.shape[0])
        if rank > self.rank:
            raise LoraError(f"rank {rank} is above the maximum rank {self.rank} fixed when hot-swapping was enabled")
        own_down, own_up = self._weights()
        if down[0].numel() != own_down[0].numel() or up.shape[0] != own_up.shape[0] or up[0].numel() != rank:
            expected = f"{tuple(own_down.shape)}, {tuple(own_up.shape)}"
            raise LoraError(f"down {tuple(down.shape)}, up {tuple(up.shape)} do not fit {expected}")

    @torch.no_grad()
    def load(self, down: torch.Tensor | None, up: torch.Tensor | None, alpha: float | None) -> None:
        """Copy a LoRA in place (``None``: zero); the rest of the rank is zero.

        Each weight is written once: the LoRA's rows (columns) are copied and only the padding is zeroed.
        """
        own_down, own_up = self._weights()
        rank = 0
        self.ratio = 0.0
        if down is not None and up is not None:
            rank = int(down.shape[0])
            own_down[:rank].copy_(down.reshape(own_down[:rank].shape))
            own_up[:, :rank].copy_(up.reshape(own_up[:, :rank].shape))
            self.ratio = (rank if alpha is None else alpha) / rank
        if rank < self.rank:
            own_down[rank:].zero_()
            own_up[:, rank:].zero_()
        self.factor.fill_(self.scale * self.ratio)  # type: ignore[operator]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x)) * self.factor

    def fuse(self) -> None:
        """Hot-swappable LoRAs stay unfused (fusing would change the weights the compiled graph reads)."""
        raise LoraError("a hot-swappable LoRA cannot be fused")

    @torch.no_grad()
    def rescale(self, scale: float) -> None:
        """Set the user scale: a copy into the factor buffer."""
        self.scale = float(scale)
        self.factor.fill_(self.scale * self.ratio)  # type: ignore[operator]
