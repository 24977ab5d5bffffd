"""Small leaf layers of the UNets: sinusoidal embeddings, spatial sizes, and the skip-connection store.

The skip connections of the UNet travel through the ``"unet"`` context, key ``"residuals"``: a list
with one entry per skip (plus one for the middle block). :class:`ResetResiduals` fills it with zeros
at the start of each forward, :class:`ResidualAccumulator` adds a down-path output into an entry,
:class:`UseResidual` reads one entry back for the up path.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch

from refiners_core import Concatenate, Identity, Residual, SetContext, UseContext
from refiners_core.context import provider_of
from refiners_core.module import Module

__all__ = [
    "AddResidual",
    "ResetResiduals",
    "ResidualAccumulator",
    "ResidualConcatenator",
    "SinusoidalEmbedding",
    "UseResidual",
]

UNET_CONTEXT = "unet"
RESIDUALS_KEY = "residuals"


class SinusoidalEmbedding(Module):
    """Sinusoidal features of scalar values (timesteps, SDXL time ids): ``[...] -> [..., dim]``.

    Takes ``(values, reference)``: the features are computed in float32, then cast to the dtype and
    device of ``reference`` (the UNet input), so the model runs the same in fp32, fp16 and bf16.
    A 0-d value is treated as a batch of one.
    """

    def __init__(
        self, dim: int, flip_sin_to_cos: bool = True, freq_shift: float = 0.0, max_period: float = 10000.0
    ) -> None:
        super().__init__()
        self.dim = dim
        self.flip_sin_to_cos = flip_sin_to_cos
        self.freq_shift = freq_shift
        self.max_period = max_period

    def forward(self, values: torch.Tensor | float, reference: torch.Tensor) -> torch.Tensor:
        values = torch.as_tensor(values, device=reference.device)
        if values.dim() == 0:
            values = values[None]
        half = self.dim // 2
        exponent = torch.arange(half, dtype=torch.float32, device=reference.device) * (
            -math.log(self.max_period) / (half - self.freq_shift)
        )
        angles = values.float()[..., None] * torch.exp(exponent)
        halves = (
            (torch.cos(angles), torch.sin(angles)) if self.flip_sin_to_cos else (torch.sin(angles), torch.cos(angles))
        )
        embedding = torch.cat(halves, dim=-1)
        if self.dim % 2:
            embedding = torch.nn.functional.pad(embedding, (0, 1))
        return embedding.to(reference.dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, flip_sin_to_cos={self.flip_sin_to_cos}, freq_shift={self.freq_shift}"


class ResetResiduals(Module):
    """Passes its input through after setting ``unet.residuals`` to ``num_residuals`` zeros (plain ``0.0``).

    The first layer of a UNet: anything inserted right after it (a ControlNet) can add its own
    residuals into the fresh list before the down path adds the skip connections.
    """

    def __init__(self, num_residuals: int) -> None:
        super().__init__()
        self.num_residuals = num_residuals

    def forward(self, x: Any) -> Any:
        provider_of(self).set_context(UNET_CONTEXT, {RESIDUALS_KEY: [0.0] * self.num_residuals})
        return x

    def extra_repr(self) -> str:
        return f"num_residuals={self.num_residuals}"


def _accumulate(index: int, residuals: list[Any], x: torch.Tensor) -> None:
    residuals[index] = residuals[index] + x


class ResidualAccumulator(SetContext):
    """Adds its input into ``unet.residuals[n]`` (``residuals[n] = residuals[n] + x``); returns it unchanged."""

    def __init__(self, n: int) -> None:
        super().__init__(UNET_CONTEXT, RESIDUALS_KEY, callback=partial(_accumulate, n))
        self.n = n

    def extra_repr(self) -> str:
        return f"n={self.n}"


class UseResidual(UseContext):
    """Ignores its input and returns ``unet.residuals[n]``."""

    def __init__(self, n: int) -> None:
        super().__init__(UNET_CONTEXT, RESIDUALS_KEY)
        self.n = n

    def forward(self, *args: Any) -> Any:
        return self.read()[self.n]

    def extra_repr(self) -> str:
        return f"n={self.n}"


class AddResidual(Residual):
    """``x + unet.residuals[n]``: follows the middle block, so that a ControlNet's middle residual reaches it."""

    def __init__(self, n: int) -> None:
        super().__init__(UseResidual(n))


class ResidualConcatenator(Concatenate):
    """Concatenates ``unet.residuals[n]`` (a skip connection) to its input along channels."""

    def __init__(self, n: int) -> None:
        super().__init__(Identity(), UseResidual(n), dim=1)
