"""Write an autoencoder as a diffusers ``AutoencoderKL`` folder (``config.json`` + safetensors weights)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from refiners_core.weights import save_state_dict
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
    state: dict[str, torch.Tensor] = {}
    for prefix, module in autoencoder_module_map(autoencoder).items():
        for name, tensor in module.state_dict().items():
            state[f"{prefix}.{name}"] = tensor.detach().contiguous()
    return state


def save_diffusers(autoencoder: AutoencoderKL, path: str | Path) -> Path:
    """Write ``autoencoder`` to the folder ``path`` in diffusers' layout and return the folder.

    ``AutoencoderKL.from_diffusers(path)`` (and diffusers' ``from_pretrained``) read it back.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    config_text = json.dumps(diffusers_config(autoencoder), indent=2, sort_keys=True) + "\n"
    (folder / "config.json").write_text(config_text, encoding="utf-8")
    weights = folder / f"{WEIGHTS_NAME}.safetensors"
    save_state_dict(diffusers_state_dict(autoencoder), weights, metadata={"format": "pt"})
    return folder
