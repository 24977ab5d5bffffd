"""LoHa: the Hadamard product of two low-rank products, ``(w1_a @ w1_b) * (w2_a @ w2_b) * alpha / rank``.

With a Tucker core (convolutions), each product is ``t`` contracted with ``w_a`` on its output and
``w_b`` on its input side (``hada_t1``, ``hada_t2``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from refiners_lora.deltas.base import (
    WeightDelta,
    check_fits,
    product_shape,
    reshape_to,
    row_blocks,
    tucker_product,
    tucker_shape,
)
from refiners_lora.errors import LoraError


class LohaDelta(WeightDelta):
    """LoHa of one layer (LyCORIS ``hada_*`` keys, PEFT LoHa)."""

    algorithm = "loha"
    reads_weight = False

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
        self.register_tensors(tensors)
        self.rank = int(tensors["hada_w1_b"].shape[0])
        if self.rank <= 0:
            raise LoraError("LoHa rank must be positive, got 0")
        self.alpha = float(self.rank if not alpha else alpha)
        self._check_shapes(tensors)  # now, not at the first forward

    def _check_shapes(self, tensors: dict[str, torch.Tensor]) -> None:
        shapes = []
        for index in ("1", "2"):
            up, down = tensors[f"hada_w{index}_a"], tensors[f"hada_w{index}_b"]
            what = f"LoHa hada_w{index}_a, hada_w{index}_b"
            if self.tucker:
                shapes.append(tucker_shape(tensors[f"hada_t{index}"], up, down, f"{what}, hada_t{index}"))
            else:
                shapes.append(product_shape(up, down, what))
        if shapes[0] != shapes[1]:
            raise LoraError(f"LoHa products of shapes {shapes[0]} (hada_w1) and {shapes[1]} (hada_w2) differ")
        check_fits(shapes[0], self.weight_shape, "LoHa delta")

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        """``(w1_a @ w1_b) * (w2_a @ w2_b) * alpha / rank`` (Tucker: each product through its core)."""
        return self.delta_at(weight, 1.0)

    def delta_at(self, weight: torch.Tensor, scale: float) -> torch.Tensor:
        """The change at scale ``scale``: the factor ``scale * alpha / rank`` multiplies the small ``w1_a``,
        and the two full-size products are multiplied in place when no gradient is recorded."""
        p = dict(self.named_parameters(recurse=False))
        w1_a = p["hada_w1_a"] * (scale * self.alpha / self.rank)
        if self.tucker:
            first = tucker_product(p["hada_t1"], w1_a, p["hada_w1_b"])
            second = tucker_product(p["hada_t2"], p["hada_w2_a"], p["hada_w2_b"])
        else:
            first = w1_a @ p["hada_w1_b"].flatten(1)
            second = p["hada_w2_a"] @ p["hada_w2_b"].flatten(1)
        product = first * second if torch.is_grad_enabled() else first.mul_(second)
        return reshape_to(product, tuple(weight.shape), "LoHa delta").to(weight.dtype)

    @torch.no_grad()
    def add_to(self, weight: torch.Tensor, scale: float) -> None:
        """``weight += delta_at(weight, scale)``, computed in blocks of output rows (no full-size temporary)."""
        p = dict(self.named_parameters(recurse=False))
        rows = p["hada_w1_a"].shape[1 if self.tucker else 0]
        if rows != weight.shape[0] or not weight.is_contiguous():
            super().add_to(weight, scale)
            return
        factor = scale * self.alpha / self.rank
        flat = weight.view(rows, -1)
        for block in row_blocks(*flat.shape):
            if self.tucker:
                first = tucker_product(p["hada_t1"], p["hada_w1_a"][:, block] * factor, p["hada_w1_b"])
                second = tucker_product(p["hada_t2"], p["hada_w2_a"][:, block], p["hada_w2_b"])
            else:
                first = (p["hada_w1_a"][block] * factor) @ p["hada_w1_b"].flatten(1)
                second = p["hada_w2_a"][block] @ p["hada_w2_b"].flatten(1)
            flat[block].add_(first.mul_(second).reshape(flat[block].shape).to(weight.dtype))

    def state(self) -> dict[str, torch.Tensor]:
        """``hada_*`` tensors and ``alpha``."""
        state = self.registered_tensors()
        state["alpha"] = torch.tensor(self.alpha)
        return state

    def peft_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """``hada_*`` tensors with ``r`` and ``alpha`` (PEFT LoHa scales by ``alpha / r`` too)."""
        tensors = self.registered_tensors()
        config = {"peft_type": "LOHA", "r": self.rank, "alpha": self.alpha, "use_effective_conv2d": self.tucker}
        return tensors, config
