"""Cheap recognition of T2I-Adapter files (the family's ``detect`` hook): config and header only, no torch."""

from __future__ import annotations

from pathlib import Path

from refiners_core.plugins.detection import read_json_object, safetensors_files, safetensors_keys

__all__ = ["is_t2i_adapter"]


def is_t2i_adapter(path: Path) -> bool:
    """Whether ``path`` is a T2I-Adapter: a diffusers ``T2IAdapter`` folder or config, or a safetensors file whose
    keys all sit under ``adapter.`` (diffusers) or ``conv_in.``/``body.`` (TencentARC)."""
    folder = path if path.is_dir() else path.parent
    config = read_json_object(folder / "config.json")
    if config is not None and config.get("_class_name") == "T2IAdapter":
        return True
    for file in safetensors_files(path):
        keys = safetensors_keys(file)
        if keys and (
            all(key.startswith("adapter.") for key in keys)
            or all(key.startswith(("conv_in.", "body.")) for key in keys)
        ):
            return True
    return False
