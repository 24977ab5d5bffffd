"""Stable Diffusion XL UNet."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from refiners_sd.configs import SDXL_UNET_CONFIG
from refiners_sd.unet.blocks import DIFFUSION_CONTEXT
from refiners_sd.unet.model import UNet

__all__ = ["SDXLUNet"]


class SDXLUNet(UNet):
    """The SDXL UNet topology (``addition_embed_type="text_time"``); defaults to the real SDXL base config.

    Inputs: :meth:`set_timestep`, :meth:`set_clip_text_embedding`, :meth:`set_time_ids`,
    :meth:`set_pooled_text_embedding`, then ``unet(latents)``.
    """

    default_config: Mapping[str, Any] = SDXL_UNET_CONFIG
    topology = "sdxl"

    def set_time_ids(self, time_ids: torch.Tensor) -> None:
        """Set the SDXL micro-conditioning ids ``[B, 6]`` (original size, crop top-left, target size)."""
        self.set_context(DIFFUSION_CONTEXT, {"time_ids": time_ids})

    def set_pooled_text_embedding(self, pooled_text_embedding: torch.Tensor) -> None:
        """Set the pooled text embedding ``[B, D]`` of the second text encoder."""
        self.set_context(DIFFUSION_CONTEXT, {"pooled_text_embedding": pooled_text_embedding})
