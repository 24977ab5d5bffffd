"""refiners-sd: Stable Diffusion 1.5 and SDXL UNets built from refiners Chains.

Names that need torch are imported on first attribute access, so importing ``refiners_sd`` (and its
plugin entry point, :mod:`refiners_sd.plugin`) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "UNet": "refiners_sd.unet.model",
    "SD1UNet": "refiners_sd.unet.sd1",
    "SDXLUNet": "refiners_sd.unet.sdxl",
    "UNetConfig": "refiners_sd.unet.config",
    "UnsupportedConfigError": "refiners_sd.unet.config",
    "load_unet": "refiners_sd.unet.loading",
    "diffusers_state_dict": "refiners_sd.unet.loading",
    "load_diffusers_state_dict": "refiners_sd.unet.loading",
    "diffusers_module_map": "refiners_sd.unet.mapping",
    "attention_processor_names": "refiners_sd.unet.mapping",
    "ldm_module_map": "refiners_sd.unet.mapping",
    "ldm_to_diffusers_name": "refiners_sd.unet.mapping",
    "diffusers_to_ldm_name": "refiners_sd.unet.mapping",
    "SD15_UNET_CONFIG": "refiners_sd.configs",
    "SDXL_UNET_CONFIG": "refiners_sd.configs",
    "KNOWN_CONFIGS": "refiners_sd.configs",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'refiners_sd' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from refiners_sd.configs import KNOWN_CONFIGS, SD15_UNET_CONFIG, SDXL_UNET_CONFIG
    from refiners_sd.unet.config import UNetConfig, UnsupportedConfigError
    from refiners_sd.unet.loading import diffusers_state_dict, load_diffusers_state_dict, load_unet
    from refiners_sd.unet.mapping import (
        attention_processor_names,
        diffusers_module_map,
        diffusers_to_ldm_name,
        ldm_module_map,
        ldm_to_diffusers_name,
    )
    from refiners_sd.unet.model import UNet
    from refiners_sd.unet.sd1 import SD1UNet
    from refiners_sd.unet.sdxl import SDXLUNet
