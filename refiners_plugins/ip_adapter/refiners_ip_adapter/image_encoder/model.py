"""A CLIP vision tower with projection built from Chains: ``pixels [B, 3, S, S] -> image_embeds [B, P]``.

The tree reuses the CLIP transformer layers of :mod:`refiners_sd.clip.transformer`::

    CLIPImageEncoder
      ViTEmbedding            class token + patch embedding (Conv2d) + position embedding
      LayerNorm               pre_layrnorm
      CLIPTransformer         TransformerLayer x N (non causal), SetContext(penultimate) before the last one
      SetContext              last_hidden_state
      ClassTokenProjection    class token -> post_layernorm -> visual_projection

A forward pass also leaves ``penultimate`` (transformers' ``hidden_states[-2]``, what IP-Adapter Plus
reads) and ``last_hidden_state`` in the ``"clip_image"`` context; :meth:`CLIPImageEncoder.encode`
returns everything at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from refiners_sd.clip.transformer import CLIPTransformer, record_penultimate
from torch import nn

from refiners_core import (
    Chain,
    Concatenate,
    Conv2d,
    Embedding,
    Flatten,
    LayerNorm,
    Linear,
    Residual,
    SetContext,
    Slicing,
    Squeeze,
    Transpose,
)
from refiners_core.context import Contexts
from refiners_core.module import WeightedModule
from refiners_ip_adapter.image_encoder.config import CLIP_VIT_H, CLIPImageConfig
from refiners_ip_adapter.image_encoder.preprocessing import ImageInput, preprocess_images

__all__ = [
    "CLIP_IMAGE_CONTEXT",
    "CLIPImageEncoder",
    "CLIPImageOutput",
    "ClassToken",
    "ClassTokenProjection",
    "PatchEmbedding",
    "ViTEmbedding",
    "ViTPositionalEmbedding",
    "VisualProjection",
]

CLIP_IMAGE_CONTEXT = "clip_image"


class ClassToken(WeightedModule):
    """The learned class token, one per batch item: ``pixels [B, ...] -> [B, 1, D]`` (``class_embedding``)."""

    def __init__(self, dim: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.class_embedding = nn.Parameter(torch.randn(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.class_embedding.reshape(1, 1, -1).expand(x.shape[0], 1, -1)

    def extra_repr(self) -> str:
        return f"dim={self.class_embedding.shape[0]}"


class PatchEmbedding(Chain):
    """Non-overlapping patches projected by a strided convolution (no bias): ``[B, 3, S, S] -> [B, N, D]``."""

    def __init__(
        self,
        num_channels: int,
        dim: int,
        patch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            Conv2d(num_channels, dim, patch_size, stride=patch_size, bias=False, device=device, dtype=dtype),
            Flatten(start_dim=2),
            Transpose(1, 2),
        )


class ViTPositionalEmbedding(Embedding):
    """The learned position table, one row per token (class token first): ``[B, L, D] -> [1, L, D]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if x.shape[1] != self.num_embeddings:
            raise ValueError(
                f"got {x.shape[1]} tokens but the position table has {self.num_embeddings}: "
                "resize the images to the encoder's image_size"
            )
        return self.weight.unsqueeze(0)


class ViTEmbedding(Chain):
    """``Concatenate(ClassToken, PatchEmbedding)`` along tokens, plus the position embedding."""

    def __init__(self, config: CLIPImageConfig, device: torch.device | str | None = None, dtype: Any = None) -> None:
        super().__init__(
            Concatenate(
                ClassToken(config.hidden_size, device=device, dtype=dtype),
                PatchEmbedding(config.num_channels, config.hidden_size, config.patch_size, device=device, dtype=dtype),
                dim=1,
            ),
            Residual(ViTPositionalEmbedding(config.num_positions, config.hidden_size, device=device, dtype=dtype)),
        )


class VisualProjection(Linear):
    """``visual_projection``: normalised class token -> image embedding (no bias)."""


class ClassTokenProjection(Chain):
    """Takes the class token ``[B, L, D] -> [B, D]``, then ``post_layernorm`` and ``visual_projection``."""

    def __init__(self, config: CLIPImageConfig, device: torch.device | str | None = None, dtype: Any = None) -> None:
        super().__init__(
            Slicing(dim=1, start=0, end=1),
            Squeeze(1),
            LayerNorm(config.hidden_size, eps=config.layer_norm_eps, device=device, dtype=dtype),
            VisualProjection(config.hidden_size, config.projection_dim, bias=False, device=device, dtype=dtype),
        )


@dataclass
class CLIPImageOutput:
    """Every output of one pass (transformers names in brackets): ``image_embeds`` [``image_embeds``, ``[B, P]``],
    ``penultimate_hidden_state`` [``hidden_states[-2]``, ``[B, L, D]``], ``last_hidden_state``
    [``last_hidden_state``, ``[B, L, D]``]."""

    image_embeds: torch.Tensor
    penultimate_hidden_state: torch.Tensor
    last_hidden_state: torch.Tensor


class CLIPImageEncoder(Chain):
    """A CLIP vision tower with projection (transformers ``CLIPVisionModelWithProjection``).

    ``encoder(pixels)`` returns ``image_embeds`` for preprocessed pixels ``[B, 3, S, S]``;
    :meth:`encode` also returns the hidden states, :meth:`preprocess` turns PIL images or ``[0, 1]``
    tensors into pixels (CLIP's resize, center crop and normalisation). Load transformers weights
    with :meth:`from_transformers`; any size works (``CLIPImageConfig``), ViT-H/14 by default.
    """

    default_config: CLIPImageConfig = CLIP_VIT_H
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    def __init__(
        self,
        config: CLIPImageConfig | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.config = config = config or self.default_config
        transformer = CLIPTransformer.from_config(config, is_causal=False, device=device, dtype=dtype)
        super().__init__(
            ViTEmbedding(config, device=device, dtype=dtype),
            LayerNorm(config.hidden_size, eps=config.layer_norm_eps, device=device, dtype=dtype),
            transformer,
            SetContext(CLIP_IMAGE_CONTEXT, "last_hidden_state"),
            ClassTokenProjection(config, device=device, dtype=dtype),
        )
        record_penultimate(transformer, CLIP_IMAGE_CONTEXT)

    def init_context(self) -> Contexts:
        return {CLIP_IMAGE_CONTEXT: {"penultimate": None, "last_hidden_state": None}}

    @property
    def transformer(self) -> CLIPTransformer:
        """The stack of transformer layers."""
        return self.ensure_find(CLIPTransformer)

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return self.ensure_find(ClassToken).class_embedding.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the weights."""
        return self.ensure_find(ClassToken).class_embedding.dtype

    def preprocess(self, images: ImageInput | Sequence[ImageInput]) -> torch.Tensor:
        """PIL images, or tensors ``[3, H, W]`` / ``[B, 3, H, W]`` with values in ``[0, 1]``, to normalised
        pixels ``[B, 3, S, S]`` on the encoder's device and dtype: shortest side resized to ``image_size``
        (bicubic), center crop, CLIP mean/std normalisation."""
        return preprocess_images(
            images, self.config.image_size, self.mean, self.std, device=self.device, dtype=self.dtype
        )

    def encode(self, pixels: torch.Tensor) -> CLIPImageOutput:
        """Run preprocessed ``pixels`` ``[B, 3, S, S]`` once and collect every output."""
        size = self.config.image_size
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != (self.config.num_channels, size, size):
            raise ValueError(
                f"expected pixels [B, {self.config.num_channels}, {size}, {size}], got {tuple(pixels.shape)}: "
                "use encoder.preprocess(images) first"
            )
        image_embeds = self(pixels.to(device=self.device, dtype=self.dtype))
        values = self.use_context(CLIP_IMAGE_CONTEXT)
        return CLIPImageOutput(
            image_embeds=image_embeds,
            penultimate_hidden_state=values["penultimate"],
            last_hidden_state=values["last_hidden_state"],
        )

    def encode_images(self, images: ImageInput | Sequence[ImageInput]) -> CLIPImageOutput:
        """:meth:`preprocess` then :meth:`encode`."""
        return self.encode(self.preprocess(images))

    @classmethod
    def from_transformers(
        cls,
        path: str | Path,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        config: CLIPImageConfig | Mapping[str, Any] | str | Path | None = None,
    ) -> CLIPImageEncoder:
        """Load a transformers ``CLIPVisionModelWithProjection``: a folder (``config.json`` +
        ``model[.fp16].safetensors``) or a safetensors file (its config from ``config``, or the
        ``config.json`` next to it). Keys are matched by name and every one is accounted for; weights are
        read straight onto ``device`` as ``dtype`` (``None`` keeps the file's dtype)."""
        from refiners_ip_adapter.image_encoder.loading import load_image_encoder

        return load_image_encoder(cls, path, device=device, dtype=dtype, config=config)

    def save_transformers(self, path: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` in transformers' layout to the folder ``path``."""
        from refiners_ip_adapter.image_encoder.saving import save_transformers

        return save_transformers(self, path)
