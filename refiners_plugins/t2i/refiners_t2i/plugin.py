"""Hooks of refiners-t2i, found through the ``refiners`` entry point.

Imported every time ``refiners`` starts: metadata only, no torch. The loader lives in
:mod:`refiners_t2i.loader` and is imported on first use.
"""

from __future__ import annotations

from refiners_core import AdapterFamily, hookimpl
from refiners_core.plugins.descriptors import TAKES_CONDITION_IMAGE

FORMATS = ("diffusers", "tencentarc")


@hookimpl
def refiners_adapter_families() -> list[AdapterFamily]:
    """Declare the ``t2i`` adapter family (alias ``t2i-adapter``) and where its loader lives."""
    return [
        AdapterFamily(
            name="t2i",
            description="T2I-Adapter (full, light, SDXL): condition-image features added to the UNet down blocks.",
            loader="refiners_t2i.loader:load_t2i_adapter",
            formats=FORMATS,
            base_models=("sd15", "sdxl"),
            aliases=("t2i-adapter",),
            takes=TAKES_CONDITION_IMAGE,
            demo="refiners_t2i.demo:write_demo_t2i_adapter",
            detect="refiners_t2i.detect:is_t2i_adapter",
        )
    ]
