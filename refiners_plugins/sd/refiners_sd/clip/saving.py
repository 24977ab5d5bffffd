"""Write a CLIP text encoder as a transformers model folder (``config.json`` + ``model.safetensors``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from refiners_core.module_map import state_dict_by_module_map
from refiners_core.weights import save_model_folder
from refiners_sd.clip.loading import TEXT_MODEL_PREFIX, text_encoder_module_map
from refiners_sd.clip.text_encoder import CLIPTextEncoder

__all__ = ["save_transformers", "transformers_config", "transformers_state_dict"]

PROJECTION = "text_projection"


def transformers_config(encoder: CLIPTextEncoder) -> dict[str, Any]:
    """The ``config.json`` mapping of a transformers ``CLIPTextModel`` (``...WithProjection`` when projected)."""
    config = encoder.config
    projected = config.projection_dim is not None
    data: dict[str, Any] = {
        "architectures": ["CLIPTextModelWithProjection" if projected else "CLIPTextModel"],
        "model_type": "clip_text_model",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "max_position_embeddings": config.max_position_embeddings,
        "hidden_act": config.hidden_act,
        "layer_norm_eps": config.layer_norm_eps,
        "eos_token_id": config.eos_token_id,
    }
    if projected:
        data["projection_dim"] = config.projection_dim
    return data


def transformers_state_dict(encoder: CLIPTextEncoder) -> dict[str, torch.Tensor]:
    """The encoder's weights under transformers names (``text_model.`` prefix, ``text_projection`` at the top)."""
    module_map = text_encoder_module_map(encoder)
    return state_dict_by_module_map(
        {
            (prefix if prefix == PROJECTION else TEXT_MODEL_PREFIX + prefix): module
            for prefix, module in module_map.items()
        }
    )


def save_transformers(encoder: CLIPTextEncoder, path: str | Path) -> Path:
    """Write ``encoder`` to the folder ``path`` in transformers' layout and return the folder.

    ``CLIPTextEncoder.from_transformers(path)`` (and transformers' ``from_pretrained``) read it back.
    """
    return save_model_folder(path, transformers_config(encoder), transformers_state_dict(encoder), "model.safetensors")
