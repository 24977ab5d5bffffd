"""Hooks of refiners-lora, found through the ``refiners`` entry point.

Imported every time ``refiners`` starts: metadata only, no torch. The loader lives in
:mod:`refiners_lora.loader` and is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from refiners_core import AdapterFamily, hookimpl

if TYPE_CHECKING:
    import typer

FORMATS = ("kohya", "diffusers", "peft", "diffusers-old", "refiners")


@hookimpl
def refiners_adapter_families() -> list[AdapterFamily]:
    """Declare the ``lora`` adapter family (takes nothing at generation time) and where its code lives."""
    return [
        AdapterFamily(
            name="lora",
            description=(
                "LoRA, LoCon, LoHa, LoKr, DoRA, full diff, (IA)^3, OFT, GLoRA (kohya, LyCORIS, diffusers, PEFT, "
                "old diffusers): stackable, scalable, fusable."
            ),
            loader="refiners_lora.loader:load_lora",
            formats=FORMATS,
            base_models=("sd15", "sdxl"),
            demo="refiners_lora.demo:write_demo_lora",
            detect="refiners_lora.detect:is_lora",
            create="refiners_lora.training:create_lora",
        )
    ]


@hookimpl
def refiners_register_commands(cli: typer.Typer) -> None:
    """Add ``refiners lora inspect``."""
    from refiners_lora.cli import register

    register(cli)
