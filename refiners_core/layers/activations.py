"""Activation functions."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from refiners_core.module import Module


class ReLU(Module):
    """``max(x, 0)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)


class SiLU(Module):
    """``x * sigmoid(x)`` (a.k.a. swish)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)


class GeLU(Module):
    """Gaussian error linear unit; ``approximate="tanh"`` for the tanh approximation."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate=self.approximate)

    def extra_repr(self) -> str:
        return "" if self.approximate == "none" else f"approximate={self.approximate!r}"


class ApproximateGeLU(Module):
    """``x * sigmoid(1.702 x)`` (CLIP's "quick GELU")."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Sigmoid(Module):
    """Logistic function."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)


class Tanh(Module):
    """Hyperbolic tangent."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)


class Softmax(Module):
    """Softmax along ``dim``."""

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=self.dim)


class GLU(Module):
    """Gated unit: splits the last dimension in two halves ``(x, gate)`` and returns ``x * activation(gate)``."""

    def __init__(self, activation: Module) -> None:
        super().__init__()
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = x.chunk(2, dim=-1)
        return value * self.activation(gate)
