"""Decoupled cross-attention: ``attention(q, text k/v) + scale * attention(q, image k/v)``, before ``to_out``.

A :class:`DecoupledCrossAttention` takes the place of the ``ScaledDotProductAttention`` inside a text
``CrossAttention`` of the UNet. It receives the projected ``(query, key, value)`` of the text
attention and adds an :class:`ImageCrossAttention` branch that reuses the query against the image
tokens (read from the ``ip_adapter`` context), so the output projection sees the sum, as published::

    CrossAttention
      Distribute(to_q, to_k, to_v)
      DecoupledCrossAttention                      <- in place of ScaledDotProductAttention
        ScaledDotProductAttention                  text attention (the original layer)
        ImageCrossAttention
          Parallel(SelectQuery, ImageKey(ImageTokens, Linear to_k_ip), ImageValue(ImageTokens, Linear to_v_ip))
          ScaledDotProductAttention
          Multiply(scale)
      Linear(to_out)

Self-attentions are never touched.
"""

from __future__ import annotations

import torch
from torch import nn

from refiners_core import Adapter, Chain, Linear, Multiply, Parallel, ScaledDotProductAttention, Sum, UseContext
from refiners_core.chain import annotate_error
from refiners_core.module import Module

__all__ = [
    "IP_ADAPTER_CONTEXT",
    "DecoupledCrossAttention",
    "ImageCrossAttention",
    "ImageKey",
    "ImageTokenProjection",
    "ImageTokens",
    "ImageValue",
    "SelectQuery",
]

IP_ADAPTER_CONTEXT = "ip_adapter"


class SelectQuery(Module):
    """``(query, key, value) -> query``."""

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return query


class ImageTokens(UseContext):
    """``(query, key, value) -> image tokens`` of the ``ip_adapter`` context, matched to the query's batch.

    Tokens made for classifier-free guidance hold ``[negative, positive]`` (batch ``2B``); a UNet batch of ``B``
    (no guidance) gets their positive half, so the caller never says whether guidance is on.
    """

    def forward(self, query: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        tokens: torch.Tensor = self.read()
        batch = query.shape[0]
        if tokens.shape[0] == 2 * batch:
            return tokens[batch:]
        return tokens


class ImageTokenProjection(Chain):
    """The image tokens (``ip_adapter`` context ``key``) through a bias-free Linear: base of the two branches."""

    def __init__(
        self,
        key: str,
        token_dim: int,
        inner_dim: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            ImageTokens(IP_ADAPTER_CONTEXT, key), Linear(token_dim, inner_dim, bias=False, device=device, dtype=dtype)
        )


class ImageKey(ImageTokenProjection):
    """The image tokens through ``to_k_ip`` (no bias)."""


class ImageValue(ImageTokenProjection):
    """The image tokens through ``to_v_ip`` (no bias)."""


class ImageCrossAttention(Chain):
    """``(q, k, v) -> scale * attention(q, to_k_ip(image), to_v_ip(image))``: the image branch of one layer.

    Args:
        key: the ``ip_adapter`` context key holding the image tokens ``[B, T, token_dim]``.
        token_dim: width of the image tokens (the UNet's ``cross_attention_dim``).
        inner_dim: width of the attention (the text attention's ``to_q`` output).
        num_heads: heads of the text attention.
        scale: the image prompt's weight in this layer.
    """

    def __init__(
        self,
        key: str,
        token_dim: int,
        inner_dim: int,
        num_heads: int,
        scale: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            Parallel(
                SelectQuery(),
                ImageKey(key, token_dim, inner_dim, device=device, dtype=dtype),
                ImageValue(key, token_dim, inner_dim, device=device, dtype=dtype),
            ),
            ScaledDotProductAttention(num_heads=num_heads),
            Multiply(scale),
        )

    @property
    def scale(self) -> float:
        """The image prompt's weight in this layer (0 skips the branch)."""
        return self.ensure_find(Multiply).scale

    @scale.setter
    def scale(self, value: float) -> None:
        self.ensure_find(Multiply).scale = float(value)

    @property
    def to_k_ip(self) -> Linear:
        """The image key projection."""
        return self.ensure_find(ImageKey).layer("Linear", Linear)

    @property
    def to_v_ip(self) -> Linear:
        """The image value projection."""
        return self.ensure_find(ImageValue).layer("Linear", Linear)


class DecoupledCrossAttention(Sum, Adapter[nn.Module]):
    """Takes the place of a text cross-attention's ``ScaledDotProductAttention``: ``target(q, k, v) +
    image(q, k, v)``. A branch whose scale is 0 is skipped, so the output is then exactly the target's."""

    def __init__(self, target: nn.Module, image_attention: ImageCrossAttention) -> None:
        with self.setup_adapter(target):
            super().__init__(target, image_attention)

    @property
    def image_attention(self) -> ImageCrossAttention:
        """The image branch."""
        return self.layer("ImageCrossAttention", ImageCrossAttention)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        layer: nn.Module = next(iter(self._children.values()))  # the target, or an adapter stacked on it
        try:
            result = layer(query, key, value)
            layer = self.image_attention
            if layer.scale != 0:
                result = result + layer(query, key, value)
        except Exception as error:
            annotate_error(error, layer, (query, key, value))
            raise
        return result
