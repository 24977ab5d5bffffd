"""The hyper-parameters of a CLIP vision tower, read from a transformers ``CLIPVisionConfig`` ``config.json``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refiners_core.config import config_from_dict, read_config

__all__ = ["CLIP_VIT_H", "KNOWN_CONFIGS", "CLIPImageConfig", "known_config_for"]


@dataclass(frozen=True)
class CLIPImageConfig:
    """Sizes and options of a CLIP vision tower with projection (transformers ``CLIPVisionConfig`` fields).

    The defaults are OpenCLIP ViT-H/14, the image encoder of the h94 IP-Adapters for SD1.5 and of the
    ``*_vit-h`` SDXL ones.
    """

    hidden_size: int = 1280
    intermediate_size: int = 5120
    num_hidden_layers: int = 32
    num_attention_heads: int = 16
    image_size: int = 224
    patch_size: int = 14
    num_channels: int = 3
    projection_dim: int = 1024
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )

    @property
    def num_positions(self) -> int:
        """Patches plus the class token."""
        return (self.image_size // self.patch_size) ** 2 + 1

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> CLIPImageConfig:
        """Read a transformers vision config mapping (a full ``CLIPConfig``'s ``vision_config`` works too)."""
        if "vision_config" in config and isinstance(config["vision_config"], Mapping):
            config = {**config["vision_config"], "projection_dim": config.get("projection_dim")}
        return config_from_dict(cls, config, source="CLIP vision config")

    @classmethod
    def from_file(cls, path: str | Path) -> CLIPImageConfig:
        """Read a ``config.json`` file (see :meth:`from_dict`)."""
        return cls.from_dict(read_config(path, "CLIP vision config"))


CLIP_VIT_H = CLIPImageConfig()
"""OpenCLIP ViT-H/14 vision tower with its 1024-wide projection."""

KNOWN_CONFIGS: tuple[CLIPImageConfig, ...] = (CLIP_VIT_H,)
"""Configs a weight file without ``config.json`` may be recognised as (from its tensor shapes)."""


def _sizes(config: CLIPImageConfig) -> dict[str, Any]:
    return {
        "hidden_size": config.hidden_size,
        "num_positions": config.num_positions,
        "patch_size": config.patch_size,
        "projection_dim": config.projection_dim,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
    }


def _sizes_from_weights(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> dict[str, Any] | None:
    try:
        hidden = shapes[f"{prefix}.embeddings.class_embedding"][0]
        positions = shapes[f"{prefix}.embeddings.position_embedding.weight"][0]
        patch = shapes[f"{prefix}.embeddings.patch_embedding.weight"][-1]
        projection = shapes["visual_projection.weight"][0]
        intermediate = shapes[f"{prefix}.encoder.layers.0.mlp.fc1.weight"][0]
    except (KeyError, IndexError):
        return None
    marker = f"{prefix}.encoder.layers."
    layers = {key[len(marker) :].split(".", 1)[0] for key in shapes if key.startswith(marker)}
    return {
        "hidden_size": hidden,
        "num_positions": positions,
        "patch_size": patch,
        "projection_dim": projection,
        "intermediate_size": intermediate,
        "num_hidden_layers": len(layers),
    }


def known_config_for(shapes: Mapping[str, tuple[int, ...]], prefix: str = "vision_model") -> CLIPImageConfig | None:
    """The known config (:data:`KNOWN_CONFIGS`) whose every size matches these transformers-named tensor shapes.

    Heads and activation cannot be read from shapes, which is why only known configs are recognised, never guessed.
    """
    sizes = _sizes_from_weights(shapes, prefix)
    if sizes is None:
        return None
    return next((config for config in KNOWN_CONFIGS if _sizes(config) == sizes), None)
