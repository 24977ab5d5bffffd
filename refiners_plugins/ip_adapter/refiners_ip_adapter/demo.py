"""The ``ip-adapter`` family's demo writer: a tiny CLIP image encoder, an h94 IP-Adapter for a demo pipeline and
a reference image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from refiners_sd.demo import perturb

from refiners_core import DemoAsset, component_of
from refiners_core.images import write_demo_reference_image
from refiners_core.weights import save_state_dict
from refiners_ip_adapter.adapter import IPAdapter
from refiners_ip_adapter.image_encoder.config import CLIPImageConfig
from refiners_ip_adapter.image_encoder.model import CLIPImageEncoder
from refiners_ip_adapter.projection import ImageProjection

__all__ = ["DEMO_IMAGE_ENCODER_CONFIG", "write_demo_image_encoder", "write_demo_ip_adapter"]

DEMO_IMAGE_ENCODER_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 8,
    "projection_dim": 16,
}
"""A CLIP vision tower with projection (the IP-Adapter image encoder), ViT-H/14's layout in miniature."""


def write_demo_image_encoder(folder: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny CLIP vision tower with projection in transformers' layout."""
    torch.manual_seed(seed)
    encoder = CLIPImageEncoder(CLIPImageConfig(**DEMO_IMAGE_ENCODER_CONFIG))
    perturb(encoder, torch.Generator().manual_seed(seed))
    return encoder.save_transformers(folder)


def write_demo_ip_adapter(folder: str | Path, pipeline: Any, *, seed: int = 0) -> DemoAsset:
    """Write ``folder/image_encoder`` (transformers CLIP vision model), ``folder/ip_adapter.safetensors`` (h94, base
    variant, for the pipeline's UNet) and ``folder/reference.png``."""
    root = Path(folder)
    encoder = write_demo_image_encoder(root / "image_encoder", seed=seed)
    unet = component_of(pipeline, "unet")
    torch.manual_seed(seed + 1)
    projection = ImageProjection(DEMO_IMAGE_ENCODER_CONFIG["projection_dim"], unet.config.cross_attention_dim[0])
    adapter = IPAdapter(unet, projection, name="demo")
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.3)
    path = save_state_dict(adapter.h94_state_dict(), root / "ip_adapter.safetensors", metadata={"format": "pt"})
    image = write_demo_reference_image(root / "reference.png")
    return DemoAsset(family="ip-adapter", path=path, image=image, inputs={"image_encoder": encoder})
