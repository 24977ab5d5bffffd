"""LoraAdapter: a target layer plus any number of named LoRAs, summed."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

import refiners_core as rc
from refiners_lora.deltas.base import WeightDelta
from refiners_lora.errors import LoraError
from refiners_lora.layers import Conv2dLora, LinearLora, Lora


class LoraAdapter(rc.Sum, rc.Adapter[nn.Module]):
    """Takes the place of a Linear, Conv2d or norm layer: ``target(x) + sum(delta(x))`` over its weight deltas
    (LoRA, LoHa, LoKr, DoRA...: any :class:`~refiners_lora.deltas.base.WeightDelta`).

    Deltas are children named after the LoRA they belong to, so several named LoRAs stack on the same
    layer. Deltas that are fused into the target's weight, or whose scale is 0, are skipped.
    """

    def __init__(self, target: nn.Module, **loras: WeightDelta) -> None:
        if not isinstance(target, nn.Linear | nn.Conv2d | nn.GroupNorm | nn.LayerNorm):
            kind = type(target).__name__
            raise LoraError(f"LoRA targets must be Linear, Conv2d, GroupNorm or LayerNorm layers, not {kind}")
        with self.setup_adapter(target):
            super().__init__(target)
        for name, lora in loras.items():
            self.add_lora(name, lora)

    @property
    def loras(self) -> dict[str, WeightDelta]:
        """The deltas of this layer by LoRA name."""
        return {name: module for name, module in self._modules.items() if isinstance(module, WeightDelta)}

    def add_lora(self, name: str, lora: WeightDelta) -> None:
        """Add ``lora`` under ``name`` (a child name: no dots); an unbound delta is bound to the target."""
        if not name or "." in name:
            raise LoraError(f"invalid LoRA name {name!r}: it must be non-empty and contain no '.'")
        if name in self._modules:
            raise LoraError(f"this layer already has a child named {name!r}")
        if not lora.is_bound:
            lora.bind(self.target)
        self.append(lora, name=name)

    def remove_lora(self, name: str) -> WeightDelta:
        """Remove and return the LoRA named ``name``."""
        lora = self.loras.get(name)
        if lora is None:
            raise LoraError(f"no LoRA named {name!r} on this layer")
        self.remove(lora)
        return lora

    def _base(self) -> nn.Module:
        return next(iter(self._children.values()))  # the target, or an adapter stacked on it

    def _active(self) -> Iterator[WeightDelta]:
        for module in self._modules.values():
            if isinstance(module, WeightDelta) and module.active:
                yield module

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        result = self._base()(x)
        plain: list[Lora] = []
        for delta in self._active():
            if type(delta) in (LinearLora, Conv2dLora):
                plain.append(delta)  # type: ignore[arg-type]
            else:
                result = result + delta(x)
        if len(plain) == 1:
            result = result + plain[0](x)
        elif plain:
            result = result + _stacked(plain, x)
        return result


def _stacked(loras: list[Lora], x: torch.Tensor) -> torch.Tensor:
    """``sum(lora(x))`` for several plain LoRAs of one layer as one down and one up projection: their
    ``down`` weights concatenated along the rank, each rank row scaled by its LoRA's factor, then their
    ``up`` weights concatenated along the rank (8 LoRAs cost about one of the summed rank)."""
    pairs = [lora._weights() for lora in loras]
    downs = [down for down, _ in pairs]
    ups = [up for _, up in pairs]
    factors = torch.cat(
        [torch.full((lora.rank,), lora.effective_scale, device=x.device, dtype=x.dtype) for lora in loras]
    )
    down = torch.cat(downs)
    up = torch.cat(ups, dim=1) * factors.view(1, -1, *[1] * (ups[0].dim() - 2))
    first = loras[0]
    if isinstance(first, LinearLora):
        return F.linear(F.linear(x, down), up)
    conv = first.down
    assert isinstance(conv, nn.Conv2d)
    hidden = conv._conv_forward(x, down, None)
    return F.conv2d(hidden, up)
