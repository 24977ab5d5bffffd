"""LoHa: the Hadamard product of two low-rank products, ``(w1_a @ w1_b) * (w2_a @ w2_b) * alpha / rank``.

With a Tucker core (convolutions), each product is ``t`` contracted with ``w_a`` on its output and
``w_b`` on its input side (``hada_t1``, ``hada_t2``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from refiners_lora.deltas.base import WeightDelta, reshape_to
from refiners_lora.errors import LoraError


def _tucker(core: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    # core (rank, rank, kh, kw), up (rank, out), down (rank, in) -> (out, in, kh, kw)
    return torch.einsum("i j ..., i o, j c -> o c ...", core, up, down)


class LohaDelta(WeightDelta):
    """LoHa of one layer (LyCORIS ``hada_*`` keys, PEFT LoHa)."""

    algorithm = "loha"

    def __init__(
        self, target: nn.Module, tensors: dict[str, torch.Tensor], alpha: float | None, scale: float = 1.0
    ) -> None:
        super().__init__(target, scale)
        names = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
        missing = [name for name in names if name not in tensors]
        if missing:
            raise LoraError(f"LoHa needs {', '.join(names)}; missing {', '.join(missing)}")
        self.tucker = "hada_t1" in tensors or "hada_t2" in tensors
        if self.tucker and not ("hada_t1" in tensors and "hada_t2" in tensors):
            raise LoraError("LoHa Tucker needs both hada_t1 and hada_t2")
        like = self.target.weight
        for name, tensor in tensors.items():
            self.register_parameter(name, nn.Parameter(tensor.to(device=like.device, dtype=like.dtype)))
        self.rank = int(tensors["hada_w1_b"].shape[0])
        if self.rank <= 0:
            raise LoraError("LoHa rank must be positive, got 0")
        self.alpha = float(self.rank if not alpha else alpha)
        self.delta(like)  # shapes checked now, not at the first forward

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        """``(w1_a @ w1_b) * (w2_a @ w2_b) * alpha / rank`` (Tucker: each product through its core)."""
        p = dict(self.named_parameters(recurse=False))
        if self.tucker:
            first = _tucker(p["hada_t1"], p["hada_w1_a"], p["hada_w1_b"])
            second = _tucker(p["hada_t2"], p["hada_w2_a"], p["hada_w2_b"])
        else:
            first = p["hada_w1_a"] @ p["hada_w1_b"].flatten(1)
            second = p["hada_w2_a"] @ p["hada_w2_b"].flatten(1)
        product = first * second * (self.alpha / self.rank)
        return reshape_to(product, tuple(weight.shape), "LoHa delta").to(weight.dtype)

    def state(self) -> dict[str, torch.Tensor]:
        """``hada_*`` tensors and ``alpha``."""
        state = {name: parameter.detach() for name, parameter in self.named_parameters(recurse=False)}
        state["alpha"] = torch.tensor(self.alpha)
        return state

    def peft_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """``hada_*`` tensors with ``r`` and ``alpha`` (PEFT LoHa scales by ``alpha / r`` too)."""
        tensors = {name: parameter.detach() for name, parameter in self.named_parameters(recurse=False)}
        return tensors, {"peft_type": "LOHA", "r": self.rank, "alpha": self.alpha}
