"""Entry point of the ``refiners-sd`` plugin: the ``sd15`` and ``sdxl`` base-model families, and the
``refiners generate`` / ``refiners demo-assets`` commands.

This module must import without torch: it only returns descriptors naming the loader by string.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from refiners_core import BaseModelFamily, hookimpl

if TYPE_CHECKING:
    import typer

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


@hookimpl
def refiners_register_commands(cli: typer.Typer) -> None:
    """Add ``refiners generate`` (text to image with adapters) and ``refiners demo-assets``."""
    from refiners_sd.cli.generate import register

    register(cli)
