"""GLoRA: ``(W @ a1 @ a2 + B) * alpha / rank``: a low-rank change of the input side of ``W`` plus a
low-rank residual ``B`` (``a1.weight``, ``a2.weight``, ``b1.weight``, ``b2.weight``).

``B`` is ``b1 @ b2``, or, on a convolution with a Tucker core ``bm.weight`` ``(rank, rank, kh, kw)``,
the core contracted with ``b1`` ``(out, rank)`` on its output side and ``b2`` ``(rank, in)`` on its
input side (the kernel then lives in the core, ``b1`` and ``b2`` are 1x1).
"""

from __future__ import annotations

import torch
from torch import nn

from refiners_lora.deltas.base import WeightDelta, check_fits, product_shape, reshape_to, tucker_shape
from refiners_lora.errors import LoraError

NAMES = ("a1.weight", "a2.weight", "b1.weight", "b2.weight")
TUCKER = "bm.weight"


class GloraDelta(WeightDelta):
    """GLoRA of one layer (LyCORIS ``a1``/``a2``/``b1``/``b2``, Tucker ``bm``)."""

    algorithm = "glora"

    def __init__(
        self, target: nn.Module, tensors: dict[str, torch.Tensor], alpha: float | None, scale: float = 1.0
    ) -> None:
        super().__init__(target, scale)
        missing = [name for name in NAMES if name not in tensors]
        if missing:
            raise LoraError(f"GLoRA needs {', '.join(NAMES)}; missing {', '.join(missing)}")
        self.rank = int(tensors["a2.weight"].shape[0])
        if self.rank <= 0:
            raise LoraError("GLoRA rank must be positive, got 0")
        self.tucker = TUCKER in tensors
        self._check_shapes(tensors)
        like = self.target.weight
        names = (*NAMES, TUCKER) if self.tucker else NAMES
        self.factors = nn.ParameterDict({name.split(".")[0]: nn.Parameter(tensors[name].to(like)) for name in names})
        self.alpha = float(self.rank if not alpha else alpha)

    def _check_shapes(self, tensors: dict[str, torch.Tensor]) -> None:
        weight_shape = self.weight_shape
        inputs = weight_shape[1]
        a1, a2 = tensors["a1.weight"], tensors["a2.weight"]
        if a1.dim() < 2 or a2.dim() < 2:
            raise LoraError(f"GLoRA a1.weight {tuple(a1.shape)} and a2.weight {tuple(a2.shape)} must be matrices")
        a_shape = product_shape(a1.flatten(1), a2, "GLoRA a1.weight, a2.weight")
        if a_shape != (inputs, inputs):
            raise LoraError(
                f"GLoRA a1.weight @ a2.weight of shape {a_shape} does not fit the {inputs} inputs of a weight of "
                f"shape {weight_shape}"
            )
        b1, b2 = tensors["b1.weight"], tensors["b2.weight"]
        if b1.dim() < 2 or b2.dim() < 2:
            raise LoraError(f"GLoRA b1.weight {tuple(b1.shape)} and b2.weight {tuple(b2.shape)} must be matrices")
        if self.tucker:
            what = "GLoRA b1.weight, b2.weight, bm.weight"
            b_shape = tucker_shape(tensors[TUCKER], b1.flatten(1).T, b2.flatten(1), what)
            if b_shape != weight_shape:
                raise LoraError(f"{what} give a delta of shape {b_shape}, not the weight's {weight_shape}")
            return
        check_fits(product_shape(b1.flatten(1), b2, "GLoRA b1.weight, b2.weight"), weight_shape, "GLoRA b1 @ b2")

    def _residual(self, weight: torch.Tensor) -> torch.Tensor:
        b1, b2 = self.factors["b1"].flatten(1), self.factors["b2"].flatten(1)
        if self.tucker:
            return torch.einsum("m n ..., o m, n c -> o c ...", self.factors["bm"], b1, b2)
        return reshape_to(b1 @ b2, tuple(weight.shape), "GLoRA b1 @ b2")

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        """``(W a1 a2 + B) * alpha / rank``."""
        a1, a2 = self.factors["a1"].flatten(1), self.factors["a2"].flatten(1)
        if weight.dim() > 2:
            through = torch.einsum("o i ..., i j, j c -> o c ...", weight, a1, a2)
        else:
            through = weight @ a1 @ a2
        factor = self.alpha / self.rank
        if torch.is_grad_enabled():
            return ((through + self._residual(weight)) * factor).to(weight.dtype)
        return through.add_(self._residual(weight)).mul_(factor).to(weight.dtype)  # fresh temporaries

    def state(self) -> dict[str, torch.Tensor]:
        """``a1.weight``... (``bm.weight``) and ``alpha``."""
        state = {f"{name}.weight": parameter.detach() for name, parameter in self.factors.items()}
        state["alpha"] = torch.tensor(self.alpha)
        return state
