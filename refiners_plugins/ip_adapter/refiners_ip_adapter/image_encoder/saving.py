"""Write a :class:`CLIPImageEncoder` as a transformers ``CLIPVisionModelWithProjection`` folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from refiners_core.module_map import state_dict_by_module_map
from refiners_core.weights import save_model_folder
from refiners_ip_adapter.image_encoder.loading import image_encoder_module_map
from refiners_ip_adapter.image_encoder.model import CLIPImageEncoder

__all__ = ["save_transformers", "transformers_config", "transformers_state_dict"]


def transformers_config(encoder: CLIPImageEncoder) -> dict[str, Any]:
    """The ``config.json`` mapping of a transformers ``CLIPVisionModelWithProjection`` for ``encoder``."""
    config = encoder.config
    return {
        "architectures": ["CLIPVisionModelWithProjection"],
        "model_type": "clip_vision_model",
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "image_size": config.image_size,
        "patch_size": config.patch_size,
        "num_channels": config.num_channels,
        "projection_dim": config.projection_dim,
        "hidden_act": config.hidden_act,
        "layer_norm_eps": config.layer_norm_eps,
    }


def transformers_state_dict(encoder: CLIPImageEncoder) -> dict[str, torch.Tensor]:
    """The encoder's weights under transformers names (``vision_model.*``, ``visual_projection.weight``)."""
    return state_dict_by_module_map(image_encoder_module_map(encoder))


def save_transformers(encoder: CLIPImageEncoder, path: str | Path) -> Path:
    """Write ``encoder`` to the folder ``path`` (``config.json`` + ``model.safetensors``) and return the folder.

    ``CLIPImageEncoder.from_transformers(path)`` (and transformers' ``from_pretrained``) read it back.
    """
    return save_model_folder(path, transformers_config(encoder), transformers_state_dict(encoder), "model.safetensors")
