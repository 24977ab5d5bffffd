"""Open a single-file checkpoint: key names and shapes from the header alone, tensors read on demand.

A safetensors file is memory-mapped (copy-on-write) and each tensor is moved to the requested device and
dtype one at a time: on the CPU in the file's dtype the model's weights are the file's pages (no copy at
all); otherwise the process holds the loaded model plus at most one tensor in flight. A pickled ``.ckpt``
(opt-in only) goes through ``torch.load(weights_only=True, mmap=True)``; a nested ``state_dict`` is unwrapped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from refiners_core import PickleRefusedError, WeightsError
from refiners_core.weights import _is_pickle  # the core's one test for pickled files

__all__ = ["CheckpointFile", "open_checkpoint", "read_safetensors_header"]

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class _Entry:
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


def read_safetensors_header(path: Path, check_size: bool = True) -> tuple[dict[str, _Entry], int]:
    """``({key: entry}, data offset)`` from the JSON header of a safetensors file (no tensor data read).

    ``check_size=False`` accepts a file shorter than its header says (the header alone is read).

    Raises:
        WeightsError: not a safetensors file, a corrupt header, or a file shorter than its header says
            (a truncated download), naming the file.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise WeightsError(f"{path} is not a safetensors file (only {size} bytes)")
        length = int.from_bytes(head, "little")
        if length > _MAX_HEADER or length + 8 > size or not length:
            raise WeightsError(f"{path} is not a safetensors file or is truncated (header of {length} bytes)")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, ValueError) as error:
            raise WeightsError(f"{path} has a corrupt safetensors header: {error}") from error
    if not isinstance(header, dict):
        raise WeightsError(f"{path} has a corrupt safetensors header")
    entries: dict[str, _Entry] = {}
    end_of_data = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype = _DTYPES.get(info.get("dtype", "")) if isinstance(info, dict) else None
        if dtype is None:
            raise WeightsError(f"{path}: tensor {key!r} has an unsupported dtype {info!r}")
        start, end = info["data_offsets"]
        entries[key] = _Entry(dtype, tuple(int(d) for d in info["shape"]), int(start), int(end))
        end_of_data = max(end_of_data, int(end))
    data_offset = 8 + length
    if check_size and data_offset + end_of_data > size:
        missing = data_offset + end_of_data - size
        raise WeightsError(
            f"{path} is truncated: its header describes {data_offset + end_of_data} bytes, the file has {size} "
            f"({missing} missing; download it again)"
        )
    return entries, data_offset


def _cast(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
    target = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
    return tensor.to(device=device, dtype=target)


@dataclass
class CheckpointFile:
    """A weight file opened for reading: ``shapes`` of every tensor, and :meth:`load` for chosen keys."""

    path: Path
    shapes: dict[str, tuple[int, ...]]
    _tensors: Mapping[str, torch.Tensor] | None = field(default=None, repr=False)

    def load(
        self, keys: Iterable[str], device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> dict[str, torch.Tensor]:
        """Read ``keys`` onto ``device`` (CPU by default), floating tensors cast to ``dtype`` (``None``: as stored)."""
        target = torch.device(device) if device is not None else torch.device("cpu")
        if self._tensors is not None:
            return {key: _cast(self._tensors[key], target, dtype) for key in keys}
        try:
            with safe_open(str(self.path), framework="pt", device="cpu") as handle:
                return {key: _cast(handle.get_tensor(key), target, dtype) for key in keys}
        except Exception as error:
            raise WeightsError(f"cannot read {self.path}: {error}") from error


def open_checkpoint(path: str | Path, allow_pickle: bool = False) -> CheckpointFile:
    """Open a ``.safetensors`` file (header only) or, with ``allow_pickle``, a pickled ``.ckpt``.

    Raises:
        WeightsError: the file is missing, unreadable or truncated (naming it).
        PickleRefusedError: a pickled file without ``allow_pickle=True``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    if _is_pickle(path):
        if not allow_pickle:
            raise PickleRefusedError(
                f"{path} is a pickled checkpoint: loading it can run arbitrary code. Convert it to safetensors, "
                "or pass allow_pickle=True (uses torch.load(weights_only=True)) if you trust its source."
            )
        return _open_pickle(path)
    entries, _ = read_safetensors_header(path)
    return CheckpointFile(path, {key: entry.shape for key, entry in entries.items()})


def _open_pickle(path: Path) -> CheckpointFile:
    try:
        loaded: Any = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) format: mmap is not available
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise WeightsError(f"cannot read pickled checkpoint {path}: {error}") from error
    except Exception as error:
        raise WeightsError(f"cannot read pickled checkpoint {path}: {error}") from error
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise WeightsError(f"{path} does not hold a state dict (got {type(loaded).__name__})")
    tensors = {key: value for key, value in loaded.items() if isinstance(value, torch.Tensor)}
    return CheckpointFile(path, {key: tuple(value.shape) for key, value in tensors.items()}, _tensors=tensors)
