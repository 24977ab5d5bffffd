"""Hooks of refiners-controlnet, found through the ``refiners`` entry point.

Imported every time ``refiners`` starts: metadata only, no torch. The loader lives in
:mod:`refiners_controlnet.loader` and is imported on first use.
"""

from __future__ import annotations

from refiners_core import AdapterFamily, hookimpl
from refiners_core.plugins.descriptors import TAKES_CONDITION_IMAGE

FORMATS = ("diffusers", "lllyasviel")


@hookimpl
def refiners_adapter_families() -> list[AdapterFamily]:
    """Declare the ``controlnet`` adapter family and where its loader lives."""
    return [
        AdapterFamily(
            name="controlnet",
            description="ControlNet (diffusers folders/files, original lllyasviel layout): several at once, scalable.",
            loader="refiners_controlnet.loader:load_controlnet",
            formats=FORMATS,
            base_models=("sd15", "sdxl"),
            takes=TAKES_CONDITION_IMAGE,
            demo="refiners_controlnet.demo:write_demo_controlnet",
            detect="refiners_controlnet.detect:is_controlnet",
        )
    ]
