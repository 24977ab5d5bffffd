"""LoKr: a Kronecker product ``kron(w1, w2)``, each factor whole or low-rank (``_a @ _b``).

``w1`` is ``lokr_w1`` or ``lokr_w1_a @ lokr_w1_b``; ``w2`` is ``lokr_w2``, ``lokr_w2_a @ lokr_w2_b``
(a convolution's ``lokr_w2_b`` may be stored flat, ``(rank, in * kh * kw)``) or, with a Tucker core
``lokr_t2``, the core contracted with ``lokr_w2_a`` and ``lokr_w2_b``. The ``alpha / rank`` scale
applies only when a factor is decomposed (the rank is that factor's); two whole factors use 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
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


class LokrDelta(WeightDelta):
    """LoKr of one layer (LyCORIS ``lokr_*`` keys, PEFT LoKr)."""

    algorithm = "lokr"
    reads_weight = False

    def __init__(
        self, target: nn.Module, tensors: dict[str, torch.Tensor], alpha: float | None, scale: float = 1.0
    ) -> None:
        super().__init__(target, scale)
        has = set(tensors)
        if not ("lokr_w1" in has or {"lokr_w1_a", "lokr_w1_b"} <= has):
            raise LoraError("LoKr needs lokr_w1 or both lokr_w1_a and lokr_w1_b")
        if not ("lokr_w2" in has or {"lokr_w2_a", "lokr_w2_b"} <= has):
            raise LoraError("LoKr needs lokr_w2 or both lokr_w2_a and lokr_w2_b")
        self.register_tensors(tensors)
        rank: int | None = None
        if "lokr_w1" not in has:
            rank = int(tensors["lokr_w1_b"].shape[0])
        elif "lokr_w2" not in has:
            rank = int(tensors["lokr_w2_b"].shape[0])
        if rank == 0:
            raise LoraError("LoKr rank must be positive, got 0")
        self.rank = rank
        self.alpha = alpha
        self.factor = 1.0 if rank is None or not alpha else alpha / rank
        # PEFT scales every LoKr by alpha / r, whole factors included (set by the PEFT reader)
        self.peft_convention = False
        self.peft_rank: int | None = None
        self._check_shapes(tensors)  # now, not at the first forward

    def _check_shapes(self, tensors: dict[str, torch.Tensor]) -> None:
        weight_shape = self.weight_shape
        w1: tuple[int, ...]
        if "lokr_w1" in tensors:
            w1 = tuple(tensors["lokr_w1"].shape)
        else:
            if tensors["lokr_w1_b"].dim() != 2:
                raise LoraError(f"LoKr lokr_w1_b must be a matrix, got shape {tuple(tensors['lokr_w1_b'].shape)}")
            w1 = product_shape(tensors["lokr_w1_a"], tensors["lokr_w1_b"], "LoKr lokr_w1_a, lokr_w1_b")
        w2: tuple[int, ...]
        if "lokr_w2" in tensors:
            w2 = tuple(tensors["lokr_w2"].shape)
        elif "lokr_t2" in tensors:
            what = "LoKr lokr_t2, lokr_w2_a, lokr_w2_b"
            w2 = tucker_shape(tensors["lokr_t2"], tensors["lokr_w2_a"], tensors["lokr_w2_b"], what)
        else:
            w2 = product_shape(tensors["lokr_w2_a"], tensors["lokr_w2_b"], "LoKr lokr_w2_a, lokr_w2_b")
            if len(weight_shape) == 4 and len(w1) == 2:
                kernel = math.prod(weight_shape[2:])
                if w2[1] % kernel:
                    raise LoraError(f"LoKr lokr_w2 of shape {w2} does not fit a kernel of {weight_shape[2:]}")
                w2 = (w2[0], w2[1] // kernel, *weight_shape[2:])
        # w1 gains trailing dimensions (as in delta), kron gives the shorter factor leading ones
        dims = max(len(w1), len(w2))
        w1, w2 = (*w1, *[1] * (dims - len(w1))), (*[1] * (dims - len(w2)), *w2)
        check_fits(tuple(a * b for a, b in zip(w1, w2, strict=True)), weight_shape, "LoKr delta")

    def _w2(self, p: Mapping[str, torch.Tensor], weight: torch.Tensor, w1: torch.Tensor) -> torch.Tensor:
        if "lokr_w2" in p:
            return p["lokr_w2"]
        if "lokr_t2" in p:
            return tucker_product(p["lokr_t2"], p["lokr_w2_a"], p["lokr_w2_b"])
        w2 = p["lokr_w2_a"] @ p["lokr_w2_b"].flatten(1)
        if weight.dim() == 4 and w1.dim() == 2:
            # (out2, in2 * kh * kw) -> (out2, in2, kh, kw) so the kernel stays out of the Kronecker product
            w2 = w2.reshape(w2.shape[0], -1, *weight.shape[2:])
        return w2

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        """``kron(w1, w2) * factor`` shaped like ``weight``."""
        return self.delta_at(weight, 1.0)

    def _factors(self, weight: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        # w1 (times scale * factor: the small factor carries every scalar) and w2, ready for kron
        p = dict(self.named_parameters(recurse=False))
        w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
        w2 = self._w2(p, weight, w1)
        w1 = w1 * (scale * self.factor)
        while w1.dim() < w2.dim():
            w1 = w1.unsqueeze(-1)
        return w1, w2.contiguous()

    def delta_at(self, weight: torch.Tensor, scale: float) -> torch.Tensor:
        """The change at scale ``scale``: ``scale * factor`` multiplies the small ``w1`` before the product."""
        w1, w2 = self._factors(weight, scale)
        return reshape_to(torch.kron(w1, w2), tuple(weight.shape), "LoKr delta").to(weight.dtype)

    @torch.no_grad()
    def add_to(self, weight: torch.Tensor, scale: float) -> None:
        """``weight += delta_at(weight, scale)``, computed in blocks of ``w1`` rows (no full-size temporary):
        ``kron(w1[i:j], w2)`` is rows ``i * len(w2)`` to ``j * len(w2)`` of the product."""
        w1, w2 = self._factors(weight, scale)
        if w1.dim() != w2.dim() or w1.shape[0] * w2.shape[0] != weight.shape[0] or not weight.is_contiguous():
            super().add_to(weight, scale)
            return
        flat = weight.view(weight.shape[0], -1)
        height = w2.shape[0]
        for block in row_blocks(w1.shape[0], height * flat.shape[1]):
            rows = slice(block.start * height, block.stop * height)
            flat[rows].add_(torch.kron(w1[block], w2).reshape(flat[rows].shape).to(weight.dtype))

    def state(self) -> dict[str, torch.Tensor]:
        """``lokr_*`` tensors and ``alpha`` (when the file had one)."""
        state = self.registered_tensors()
        if self.alpha is not None:
            state["alpha"] = torch.tensor(self.alpha)
        return state

    @property
    def peft_only(self) -> bool:
        """A LoKr read from a PEFT file keeps PEFT's ``alpha / r`` scale (LyCORIS files drop it for whole factors)."""
        return self.peft_convention

    def peft_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """``lokr_*`` tensors, with ``r`` and ``alpha`` giving this delta's scale as ``alpha / r``."""
        tensors = self.registered_tensors()
        rank = self.peft_rank or self.rank or 1
        config = {"peft_type": "LOKR", "r": rank, "alpha": self.factor * rank}
        config["decompose_both"] = "lokr_w1_a" in tensors
        config["use_effective_conv2d"] = "lokr_t2" in tensors
        return tensors, config
