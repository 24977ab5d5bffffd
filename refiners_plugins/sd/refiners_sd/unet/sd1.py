"""Stable Diffusion 1.x UNet."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from refiners_sd.configs import SD15_UNET_CONFIG
from refiners_sd.unet.model import UNet

__all__ = ["SD1UNet"]


class SD1UNet(UNet):
    """The SD1.5 UNet topology (no ``addition_embed_type``); defaults to the real SD1.5 config.

    Inputs: :meth:`set_timestep`, :meth:`set_clip_text_embedding`, then ``unet(latents)``.
    """

    default_config: Mapping[str, Any] = SD15_UNET_CONFIG
    topology = "sd15"
