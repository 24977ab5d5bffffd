"""Write an autoencoder as a diffusers ``AutoencoderKL`` folder (``config.json`` + safetensors weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from refiners_core.module_map import state_dict_by_module_map
from refiners_core.weights import save_model_folder
from refiners_sd.vae.loading import WEIGHTS_NAME, autoencoder_module_map
from refiners_sd.vae.model import AutoencoderKL

__all__ = ["diffusers_config", "diffusers_state_dict", "save_diffusers"]


def diffusers_config(autoencoder: AutoencoderKL) -> dict[str, Any]:
    """The ``config.json`` mapping diffusers' ``AutoencoderKL`` reads for this model."""
    config = autoencoder.config
    blocks = len(config.block_out_channels)
    return {
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "block_out_channels": list(config.block_out_channels),
        "down_block_types": ["DownEncoderBlock2D"] * blocks,
        "up_block_types": ["UpDecoderBlock2D"] * blocks,
        "layers_per_block": config.layers_per_block,
        "latent_channels": config.latent_channels,
        "norm_num_groups": config.norm_num_groups,
        "scaling_factor": config.scaling_factor,
        "shift_factor": config.shift_factor,
        "mid_block_add_attention": config.mid_block_add_attention,
        "use_quant_conv": config.use_quant_conv,
        "use_post_quant_conv": config.use_post_quant_conv,
    }


def diffusers_state_dict(autoencoder: AutoencoderKL) -> dict[str, torch.Tensor]:
    """The autoencoder's weights under diffusers names."""
    return state_dict_by_module_map(autoencoder_module_map(autoencoder))


def save_diffusers(autoencoder: AutoencoderKL, path: str | Path) -> Path:
    """Write ``autoencoder`` to the folder ``path`` in diffusers' layout and return the folder.

    ``AutoencoderKL.from_diffusers(path)`` (and diffusers' ``from_pretrained``) read it back.
    """
    return save_model_folder(
        path, diffusers_config(autoencoder), diffusers_state_dict(autoencoder), f"{WEIGHTS_NAME}.safetensors"
    )
