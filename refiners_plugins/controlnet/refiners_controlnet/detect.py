"""Cheap recognition of ControlNet files (the family's ``detect`` hook): config and header only, no torch."""

from __future__ import annotations

from pathlib import Path

from refiners_core.plugins.detection import read_json_object, safetensors_files, safetensors_keys

__all__ = ["is_controlnet"]

_KEY_MARKERS = ("controlnet_cond_embedding.", "input_hint_block.")


def is_controlnet(path: Path) -> bool:
    """Whether ``path`` is a ControlNet: a diffusers ``ControlNetModel`` folder or config, or a safetensors file
    with a condition embedding (diffusers ``controlnet_cond_embedding``, lllyasviel ``input_hint_block``)."""
    folder = path if path.is_dir() else path.parent
    config = read_json_object(folder / "config.json")
    if config is not None and config.get("_class_name") == "ControlNetModel":
        return True
    return any(
        any(marker in key for marker in _KEY_MARKERS for key in safetensors_keys(file))
        for file in safetensors_files(path)
    )
