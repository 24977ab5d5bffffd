"""The ``lora`` family's demo writer: a tiny random kohya LoRA on a demo pipeline's UNet and text encoders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from refiners_core import DemoAsset
from refiners_lora.pipeline_targets import component_targets
from refiners_lora.writers import write_lora

__all__ = ["write_demo_lora"]

UNET_SUFFIXES = (".to_q", ".to_k", ".to_v", ".to_out.0")
TEXT_SUFFIXES = (".self_attn.q_proj", ".self_attn.v_proj")


def write_demo_lora(folder: str | Path, pipeline: Any, *, seed: int = 0, rank: int = 4) -> DemoAsset:
    """Write ``folder/lora.safetensors``: a kohya LoRA on every UNet attention projection and on the text
    encoders' query and value projections (so both ``lora_unet_`` and ``lora_te`` parts are exercised)."""
    maps, _ = component_targets(pipeline)
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor, float]] = {}
    for component, names in maps.items():
        suffixes = UNET_SUFFIXES if component == "unet" else TEXT_SUFFIXES
        for name, layer in names.items():
            weight = getattr(layer, "weight", None)
            if not name.endswith(suffixes) or not isinstance(weight, torch.Tensor) or weight.dim() != 2:
                continue
            down = torch.randn(rank, weight.shape[1], generator=generator) * 0.3
            up = torch.randn(weight.shape[0], rank, generator=generator) * 0.3
            tensors[(component, name)] = (down, up, float(rank))
    path = write_lora(tensors, Path(folder) / "lora.safetensors", format="kohya")
    return DemoAsset(family="lora", path=path)
