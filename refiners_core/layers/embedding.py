"""Lookup tables and free parameters."""

from __future__ import annotations

import torch
from torch import nn

from refiners_core.module import SkipInitOnMeta, WeightedModule


class Embedding(SkipInitOnMeta, nn.Embedding, WeightedModule):
    """Index lookup table (``torch.nn.Embedding``)."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, device=device, dtype=dtype)


class Parameter(WeightedModule):
    """A learned tensor returned for every input, expanded to the input's batch size (e.g. positional embeddings)."""

    def __init__(self, *dims: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.dims = dims
        self.weight = nn.Parameter(torch.randn(*dims, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight.expand(x.shape[0], *self.dims)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"
