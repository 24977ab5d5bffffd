"""Entry point of the ``refiners-sd`` plugin: contributes the ``sd15`` and ``sdxl`` base-model families.

This module must import without torch: it only returns descriptors naming the loader by string.
"""

from __future__ import annotations

from refiners_core import BaseModelFamily, hookimpl

UNET_LOADER = "refiners_sd.unet.loading:load_unet"


@hookimpl
def refiners_base_models() -> list[BaseModelFamily]:
    """The Stable Diffusion base models: SD1.5 and SDXL UNets loaded from diffusers folders or files."""
    return [
        BaseModelFamily(
            name="sd15",
            description="Stable Diffusion 1.x UNet (diffusers layout; class chosen from config.json)",
            loader=UNET_LOADER,
        ),
        BaseModelFamily(
            name="sdxl",
            description="Stable Diffusion XL UNet (diffusers layout; class chosen from config.json)",
            loader=UNET_LOADER,
        ),
    ]
