"""Hooks of refiners-ip-adapter, found through the ``refiners`` entry point.

Imported every time ``refiners`` starts: metadata only, no torch. The loader lives in
:mod:`refiners_ip_adapter.loader` and is imported on first use.
"""

from __future__ import annotations

from refiners_core import AdapterFamily, hookimpl
from refiners_core.plugins.descriptors import TAKES_REFERENCE_IMAGE


@hookimpl
def refiners_adapter_families() -> list[AdapterFamily]:
    """Declare the ``ip-adapter`` family and where its loader lives."""
    return [
        AdapterFamily(
            name="ip-adapter",
            description="IP-Adapter and IP-Adapter Plus (h94 files): image prompts through decoupled cross-attention.",
            loader="refiners_ip_adapter.loader:load_ip_adapter",
            formats=("h94",),
            base_models=("sd15", "sdxl"),
            aliases=("ip_adapter", "ipadapter"),
            takes=TAKES_REFERENCE_IMAGE,
            inputs=("image_encoder",),
            demo="refiners_ip_adapter.demo:write_demo_ip_adapter",
            detect="refiners_ip_adapter.detect:is_ip_adapter",
        )
    ]
