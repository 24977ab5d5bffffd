"""Cheap recognition of IP-Adapter files (the family's ``detect`` hook): header only, no torch."""

from __future__ import annotations

from pathlib import Path

from refiners_core.plugins.detection import safetensors_files, safetensors_keys

__all__ = ["is_ip_adapter"]


def is_ip_adapter(path: Path) -> bool:
    """Whether ``path`` is (or is a folder holding) an h94 IP-Adapter safetensors file: ``image_proj.*`` and
    ``ip_adapter.*`` keys."""
    for file in safetensors_files(path):
        keys = safetensors_keys(file)
        if any(key.startswith("image_proj.") for key in keys) and any(key.startswith("ip_adapter.") for key in keys):
            return True
    return False
