"""The ``controlnet`` family's demo writer: a tiny random ControlNet for a demo pipeline, and its condition image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from refiners_sd.demo import perturb

from refiners_controlnet.model import ControlNet
from refiners_core import DemoAsset, component_of
from refiners_core.images import write_demo_condition_image

__all__ = ["write_demo_controlnet"]


def write_demo_controlnet(folder: str | Path, pipeline: Any, *, seed: int = 0) -> DemoAsset:
    """Write ``folder/controlnet`` (a diffusers ControlNet folder for the pipeline's UNet) and
    ``folder/condition.png``. Its zero convolutions are perturbed too, so that the condition visibly matters."""
    unet = component_of(pipeline, "unet")
    config = {**unet.config.to_dict(), "conditioning_embedding_out_channels": [8, 8, 16, 16]}
    torch.manual_seed(seed)
    controlnet = ControlNet(unet, config, name="demo")
    perturb(controlnet.encoder, torch.Generator().manual_seed(seed))
    path = controlnet.save_diffusers(Path(folder) / "controlnet")
    image = write_demo_condition_image(Path(folder) / "condition.png")
    return DemoAsset(family="controlnet", path=path, image=image)
