"""The ``t2i`` family's demo writer: a tiny random T2I-Adapter for a demo pipeline, and its condition image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from refiners_sd.demo import perturb

from refiners_core import DemoAsset, component_of
from refiners_core.images import write_demo_condition_image
from refiners_t2i.adapter import T2IAdapter
from refiners_t2i.config import T2IConfig

__all__ = ["write_demo_t2i_adapter"]


def write_demo_t2i_adapter(folder: str | Path, pipeline: Any, *, seed: int = 0) -> DemoAsset:
    """Write ``folder/t2i`` (a diffusers ``full_adapter`` folder with one feature per down block of the pipeline's
    UNet and a grayscale condition, like SD1.5's sketch and canny adapters) and ``folder/condition.png``."""
    unet = component_of(pipeline, "unet")
    config = T2IConfig(in_channels=1, channels=tuple(unet.config.block_out_channels), num_res_blocks=1)
    torch.manual_seed(seed)
    adapter = T2IAdapter(unet, config, name="demo")
    perturb(adapter.encoder, torch.Generator().manual_seed(seed))
    path = adapter.save_diffusers(Path(folder) / "t2i")
    image = write_demo_condition_image(Path(folder) / "condition.png")
    return DemoAsset(family="t2i", path=path, image=image)
