"""Entry point of the ``refiners-sd`` plugin: the ``sd15`` and ``sdxl`` base-model families.

This module must import without torch: it only returns descriptors naming the loader by string.
"""

from __future__ import annotations

from refiners_core import BaseModelFamily, hookimpl

LOADER = "refiners_sd.base_model:load_base"
OPTIONS = ("solver", "vae")


@hookimpl
def refiners_base_models() -> list[BaseModelFamily]:
    """The Stable Diffusion base models, loaded as pipelines following refiners_core.contracts.Pipeline."""
    return [
        BaseModelFamily(
            name="sd15",
            description="Stable Diffusion 1.x pipeline (diffusers folder): CLIP ViT-L, SD1 UNet, KL VAE",
            loader=LOADER,
            detect="refiners_sd.detect:detect_sd15",
            demo="refiners_sd.base_model:write_demo_base",
            options=OPTIONS,
        ),
        BaseModelFamily(
            name="sdxl",
            description="Stable Diffusion XL pipeline (diffusers folder): CLIP ViT-L + bigG, SDXL UNet, KL VAE",
            loader=LOADER,
            detect="refiners_sd.detect:detect_sdxl",
            options=OPTIONS,
        ),
    ]
