"""Write a pipeline back as one single-file checkpoint (the layout of :mod:`refiners_sd.single_file.layout`).

The file is what A1111/ComfyUI-style tools and diffusers' ``from_single_file`` read: LDM names for the UNet
and the VAE (attention projections as 1x1 convolutions), CLIP ViT-L in transformers names with
``text_model.``, OpenCLIP bigG in open_clip names (stacked ``in_proj``, ``text_projection`` as ``x @ P``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from refiners_core.module_map import state_dict_by_module_map
from refiners_core.weights import save_state_dict
from refiners_sd.clip.saving import transformers_state_dict
from refiners_sd.pipeline.stable_diffusion import StableDiffusion1, StableDiffusionXL
from refiners_sd.single_file.layout import COMPONENT_PREFIXES, Architecture
from refiners_sd.single_file.names import diffusers_vae_to_ldm, transformers_to_open_clip
from refiners_sd.unet.mapping import ldm_module_map
from refiners_sd.vae.loading import autoencoder_module_map

__all__ = ["save_single_file", "single_file_state_dict"]


def _prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in tensors.items()}


def single_file_state_dict(pipeline: StableDiffusion1 | StableDiffusionXL) -> dict[str, torch.Tensor]:
    """Every weight of ``pipeline`` under its single-file name (tensors shared with the models, not copied)."""
    architecture: Architecture = "sdxl" if isinstance(pipeline, StableDiffusionXL) else "sd15"
    prefixes = COMPONENT_PREFIXES[architecture]
    tensors = _prefixed(prefixes["unet"], state_dict_by_module_map(ldm_module_map(pipeline.unet)))
    vae = diffusers_vae_to_ldm(state_dict_by_module_map(autoencoder_module_map(pipeline.autoencoder)))
    tensors.update(_prefixed(prefixes["vae"], vae))
    if isinstance(pipeline, StableDiffusionXL):
        encoder_l = pipeline.text_encoder.text_encoder_l
        encoder_g = transformers_to_open_clip(transformers_state_dict(pipeline.text_encoder.text_encoder_g))
        tensors.update(_prefixed(prefixes["text_encoder_2"], encoder_g))
    else:
        encoder_l = pipeline.text_encoder
    tensors.update(_prefixed(prefixes["text_encoder"], transformers_state_dict(encoder_l)))
    return tensors


def save_single_file(pipeline: StableDiffusion1 | StableDiffusionXL, path: str | Path) -> Path:
    """Write ``pipeline`` (SD 1.x or SDXL) to the safetensors file ``path``, in each tensor's current dtype.

    :func:`refiners_sd.load_pipeline` and diffusers' ``from_single_file`` read it back. Returns the path.
    """
    return save_state_dict(single_file_state_dict(pipeline), path, metadata={"format": "pt"})
