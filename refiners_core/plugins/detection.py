"""Cheap file probes for ``detect`` hooks: safetensors keys and ``config.json`` contents, without torch.

Families and base models recognise their files from names and headers only; these helpers read no tensor data
and never raise on unreadable input (they return empty results), since ``detect`` answers yes or no.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

__all__ = ["MAX_HEADER_BYTES", "read_json_object", "safetensors_files", "safetensors_keys"]

MAX_HEADER_BYTES = 100 * 1024 * 1024
"""Headers above this size are not read (the safetensors format's own limit)."""


def safetensors_keys(path: str | Path) -> frozenset[str]:
    """The tensor names in a ``.safetensors`` file's header (empty when it is not a readable one)."""
    try:
        with Path(path).open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) != 8:
                return frozenset()
            (size,) = struct.unpack("<Q", prefix)
            if size > MAX_HEADER_BYTES:
                return frozenset()
            header = json.loads(handle.read(size))
    except (OSError, ValueError):
        return frozenset()
    if not isinstance(header, dict):
        return frozenset()
    return frozenset(key for key in header if key != "__metadata__")


def safetensors_files(path: str | Path) -> list[Path]:
    """``path`` if it is a ``.safetensors`` file, else the ``.safetensors`` files directly inside the folder."""
    target = Path(path)
    if target.is_file():
        return [target] if target.suffix == ".safetensors" else []
    if target.is_dir():
        return sorted(target.glob("*.safetensors"))
    return []


def read_json_object(path: str | Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` when it is absent, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
