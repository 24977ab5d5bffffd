"""Load transformers CLIP text checkpoints (``config.json`` + ``model.safetensors``) into our encoders."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from refiners_core import find_weight_files, load_weight_files, read_config
from refiners_core.module_map import load_by_module_map
from refiners_sd.clip.config import CLIPTextConfig
from refiners_sd.clip.text_encoder import CLIPTextEncoder, Pooling, PositionalEmbedding, TextProjection, TokenEmbedding
from refiners_sd.clip.transformer import clip_transformer_map

__all__ = ["load_text_encoder", "text_encoder_module_map"]

E = TypeVar("E", bound=CLIPTextEncoder)

# transformers < 5 saved the text tower under "text_model."; 5.x saves a bare CLIPTextModel without it.
TEXT_MODEL_PREFIX = "text_model."
IGNORED_KEYS = ("embeddings.position_ids",)


def text_encoder_module_map(encoder: CLIPTextEncoder) -> dict[str, nn.Module]:
    """transformers module names (without the ``text_model.`` prefix) -> our leaves."""
    mapping: dict[str, nn.Module] = {
        "embeddings.token_embedding": encoder.ensure_find(TokenEmbedding),
        "embeddings.position_embedding": encoder.ensure_find(PositionalEmbedding),
        "final_layer_norm": encoder.layer("LayerNorm"),
    }
    mapping.update(clip_transformer_map("encoder.layers", encoder.transformer))
    projection = encoder.ensure_find(Pooling).find(TextProjection)
    if projection is not None:
        mapping["text_projection"] = projection
    return mapping


def _strip_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key.removeprefix(TEXT_MODEL_PREFIX): value for key, value in state_dict.items()}


def load_text_encoder(
    cls: type[E],
    path: str | Path,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> E:
    """Build ``cls`` from ``path/config.json`` and load ``path``'s weights by name (see ``from_transformers``)."""
    folder = Path(path)
    raw_config = read_config(folder, "CLIP text encoder config")
    files = find_weight_files(folder, "model", what="CLIP text encoder weights")
    weights_path = files[0] if len(files) == 1 else folder
    state_dict = _strip_prefix(load_weight_files(files, device=device, dtype=dtype))
    config = CLIPTextConfig.from_dict(raw_config, projection="text_projection.weight" in state_dict)
    if config.projection_dim is not None:
        config = config.with_projection(state_dict["text_projection.weight"].shape[0])
    encoder = cls(config, device=device, dtype=dtype)
    load_by_module_map(
        encoder, text_encoder_module_map(encoder), state_dict, source=str(weights_path), ignore=IGNORED_KEYS
    )
    return encoder.eval()
