"""Reading and writing diffusers UNet weights (folders, fp16 variants, shards, single files)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from refiners_core import WeightsError
from refiners_core.config import resolve_config
from refiners_core.model_folder import find_weight_files
from refiners_core.module_map import load_by_module_map, state_dict_by_module_map
from refiners_core.weights import load_weight_files, save_model_folder
from refiners_sd.unet.config import UNetConfig
from refiners_sd.unet.mapping import diffusers_module_map
from refiners_sd.unet.model import UNet

__all__ = ["diffusers_state_dict", "load_diffusers_state_dict", "load_unet", "save_diffusers"]

WEIGHTS_NAME = "diffusion_pytorch_model"


def load_diffusers_state_dict(unet: UNet, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load a diffusers-named state dict into ``unet`` (built on any device, ``meta`` included).

    Every key is accounted for: unexpected keys (no such diffusers module or parameter), missing
    parameters and shape mismatches raise :class:`WeightsError` listing them; nothing is loaded then.
    A meta-built ``unet`` gets the tensors assigned as they are (their device and dtype become the model's).
    """
    load_by_module_map(unet, diffusers_module_map(unet), state_dict, source="diffusers weights")


def diffusers_state_dict(unet: UNet) -> dict[str, torch.Tensor]:
    """The weights of ``unet`` under diffusers names (``down_blocks.0.resnets.0.conv1.weight``...)."""
    return state_dict_by_module_map(diffusers_module_map(unet))


def load_unet(
    path: str | Path,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    *,
    config: str | Path | Mapping[str, Any] | None = None,
    variant: str | None = None,
    unet_class: type[UNet] | None = None,
) -> UNet:
    """Load a diffusers UNet as :class:`SD1UNet` or :class:`SDXLUNet` (chosen from the config).

    ``path``: a diffusers UNet folder, or a single safetensors file with diffusers keys (its config
    given as ``config`` or found as ``config.json`` next to it). The model is built on the ``meta``
    device and the file's tensors are assigned to it, read straight onto ``device`` (CPU by default)
    and cast to ``dtype`` (the file's dtype when ``None``).
    """
    from refiners_sd.unet.sd1 import SD1UNet
    from refiners_sd.unet.sdxl import SDXLUNet

    path = Path(path)
    if not path.exists():
        raise WeightsError(f"UNet weights not found: {path}")
    unet_config = resolve_config(config, UNetConfig, default=path if path.is_dir() else path.parent, what="UNet config")
    if unet_class is None or unet_class is UNet:
        unet_class = SDXLUNet if unet_config.topology == "sdxl" else SD1UNet
    files = (
        find_weight_files(path, WEIGHTS_NAME, variant=variant, what="diffusers UNet weights")
        if path.is_dir()
        else [path]
    )
    state_dict = load_weight_files(files, device=device, dtype=dtype)
    unet = unet_class(unet_config, device="meta")
    load_diffusers_state_dict(unet, state_dict)
    return unet


def save_diffusers(unet: UNet, path: str | Path, variant: str | None = None) -> Path:
    """Write ``unet`` as a diffusers UNet folder: ``config.json`` and ``diffusion_pytorch_model[.variant].safetensors``.

    ``diffusers.UNet2DConditionModel.from_pretrained(path)`` reads it back. Returns the folder.
    """
    config = unet.config.to_dict()
    config.setdefault("_class_name", "UNet2DConditionModel")
    name = f"{WEIGHTS_NAME}.{variant}.safetensors" if variant else f"{WEIGHTS_NAME}.safetensors"
    return save_model_folder(path, config, diffusers_state_dict(unet), name)
