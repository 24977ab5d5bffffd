"""GLoRA: ``(W @ a1 @ a2 + b1 @ b2) * alpha / rank``: a low-rank change of the input side of ``W``
plus a low-rank residual (``a1.weight``, ``a2.weight``, ``b1.weight``, ``b2.weight``)."""

from __future__ import annotations

import torch
from torch import nn

from refiners_lora.deltas.base import WeightDelta, reshape_to
from refiners_lora.errors import LoraError

NAMES = ("a1.weight", "a2.weight", "b1.weight", "b2.weight")


class GloraDelta(WeightDelta):
    """GLoRA of one layer (LyCORIS ``a1``/``a2``/``b1``/``b2``)."""

    algorithm = "glora"

    def __init__(
        self, target: nn.Module, tensors: dict[str, torch.Tensor], alpha: float | None, scale: float = 1.0
    ) -> None:
        super().__init__(target, scale)
        missing = [name for name in NAMES if name not in tensors]
        if missing:
            raise LoraError(f"GLoRA needs {', '.join(NAMES)}; missing {', '.join(missing)}")
        like = self.target.weight
        self.factors = nn.ParameterDict({name.split(".")[0]: nn.Parameter(tensors[name].to(like)) for name in NAMES})
        self.rank = int(tensors["a2.weight"].shape[0])
        if self.rank <= 0:
            raise LoraError("GLoRA rank must be positive, got 0")
        self.alpha = float(self.rank if not alpha else alpha)
        self.delta(like)

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        """``(W a1 a2 + b1 b2) * alpha / rank``."""
        a1, a2 = self.factors["a1"].flatten(1), self.factors["a2"].flatten(1)
        b1, b2 = self.factors["b1"].flatten(1), self.factors["b2"].flatten(1)
        residual = reshape_to(b1 @ b2, tuple(weight.shape), "GLoRA b1 @ b2")
        if weight.dim() > 2:
            through = torch.einsum("o i ..., i j, j c -> o c ...", weight, a1, a2)
        else:
            through = weight @ a1 @ a2
        return ((through + residual) * (self.alpha / self.rank)).to(weight.dtype)

    def state(self) -> dict[str, torch.Tensor]:
        """``a1.weight``... and ``alpha``."""
        state = {f"{name}.weight": parameter.detach() for name, parameter in self.factors.items()}
        state["alpha"] = torch.tensor(self.alpha)
        return state
