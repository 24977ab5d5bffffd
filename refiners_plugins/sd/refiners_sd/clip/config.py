"""The hyper-parameters of a CLIP text tower, read from a transformers ``CLIPTextConfig`` ``config.json``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from refiners_core.config import config_from_dict, read_config

__all__ = ["CLIP_TEXT_G", "CLIP_TEXT_L", "CLIPTextConfig"]


@dataclass(frozen=True)
class CLIPTextConfig:
    """Sizes and options of a CLIP text encoder (the fields of transformers' ``CLIPTextConfig`` we use).

    ``projection_dim`` is ``None`` for a bare ``CLIPTextModel`` and the size of ``text_projection`` for a
    ``CLIPTextModelWithProjection``. ``eos_token_id`` picks the pooling rule (see ``EOSPooling``).
    """

    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int | None = 2
    projection_dim: int | None = None

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], projection: bool = False) -> CLIPTextConfig:
        """Read a transformers config mapping; ``projection`` keeps ``projection_dim`` (a model with projection)."""
        fields = dict(config)
        eos = config.get("eos_token_id", cls.eos_token_id)
        if isinstance(eos, list):  # transformers accepts a list; the first id is the one pooling looks for
            fields["eos_token_id"] = eos[0] if eos else None
        fields["projection_dim"] = config.get("projection_dim") or 512 if projection else None
        return config_from_dict(cls, fields, source="CLIP text config")

    @classmethod
    def from_file(cls, path: str | Path, projection: bool = False) -> CLIPTextConfig:
        """Read a ``config.json`` file (see :meth:`from_dict`)."""
        return cls.from_dict(read_config(path, "CLIP text config"), projection=projection)

    def with_projection(self, projection_dim: int | None) -> CLIPTextConfig:
        """A copy with another ``projection_dim``."""
        return replace(self, projection_dim=projection_dim)


CLIP_TEXT_L = CLIPTextConfig()
"""OpenAI CLIP ViT-L/14 text tower: Stable Diffusion 1.5's and SDXL's first text encoder."""

CLIP_TEXT_G = CLIPTextConfig(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    hidden_act="gelu",
    projection_dim=1280,
)
"""OpenCLIP ViT-bigG/14 text tower with its projection: SDXL's second text encoder."""
