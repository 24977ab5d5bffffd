"""refiners-ip-adapter: IP-Adapter (base, Plus) for refiners SD1.5/SDXL UNets, and a CLIP image encoder.

Names are imported on first access (PEP 562) so that ``refiners_ip_adapter.plugin`` stays torch-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from refiners_core.lazy import lazy_exports

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "IPAdapter": "refiners_ip_adapter.adapter",
    "DecoupledCrossAttention": "refiners_ip_adapter.attention",
    "ImageCrossAttention": "refiners_ip_adapter.attention",
    "ImageProjection": "refiners_ip_adapter.projection",
    "FullImageProjection": "refiners_ip_adapter.projection",
    "PerceiverResampler": "refiners_ip_adapter.projection",
    "IPAdapterWeights": "refiners_ip_adapter.formats",
    "parse_h94": "refiners_ip_adapter.formats",
    "load_ip_adapter": "refiners_ip_adapter.loader",
    "CLIPImageEncoder": "refiners_ip_adapter.image_encoder.model",
    "CLIPImageOutput": "refiners_ip_adapter.image_encoder.model",
    "CLIPImageConfig": "refiners_ip_adapter.image_encoder.config",
    "CLIP_VIT_H": "refiners_ip_adapter.image_encoder.config",
    "preprocess_images": "refiners_ip_adapter.image_encoder.preprocessing",
}

__all__ = ["__version__", *_LAZY]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)


if TYPE_CHECKING:
    from refiners_ip_adapter.adapter import IPAdapter
    from refiners_ip_adapter.attention import DecoupledCrossAttention, ImageCrossAttention
    from refiners_ip_adapter.formats import IPAdapterWeights, parse_h94
    from refiners_ip_adapter.image_encoder.config import CLIP_VIT_H, CLIPImageConfig
    from refiners_ip_adapter.image_encoder.model import CLIPImageEncoder, CLIPImageOutput
    from refiners_ip_adapter.image_encoder.preprocessing import preprocess_images
    from refiners_ip_adapter.loader import load_ip_adapter
    from refiners_ip_adapter.projection import FullImageProjection, ImageProjection, PerceiverResampler
