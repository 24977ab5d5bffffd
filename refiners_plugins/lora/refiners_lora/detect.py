"""Cheap recognition of LoRA files (the family's ``detect`` hook): header only, no torch."""

from __future__ import annotations

from pathlib import Path

from refiners_core.plugins.detection import safetensors_files, safetensors_keys

__all__ = ["is_lora"]

_MARKERS = (".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", ".lora.down.", ".lora.up.", "lora_unet_", "lora_te")


def is_lora(path: Path) -> bool:
    """Whether ``path`` is (or is a folder holding) a safetensors file of LoRA layers (kohya, diffusers, PEFT)."""
    return any(
        any(marker in key for key in safetensors_keys(file) for marker in _MARKERS) for file in safetensors_files(path)
    )
