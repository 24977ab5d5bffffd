"""Weight files: safetensors in and out, straight to the requested device and dtype; pickle only on opt-in."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from refiners_core.errors import PickleRefusedError, WeightsError
from refiners_core.model_folder import PICKLE_SUFFIXES


def _is_pickle(path: Path) -> bool:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    if _looks_like_safetensors(path):
        return False
    with path.open("rb") as handle:
        head = handle.read(2)
    # zip archives (torch.save) and raw pickle streams (protocol 2+ starts with 0x80)
    return head[:2] == b"PK" or head[:1] == b"\x80"


def _looks_like_safetensors(path: Path) -> bool:
    """An 8-byte little-endian header size of a plausible value, then ``{``: safetensors, maybe damaged.

    The size's first byte may be 0x80, like a pickle's first byte; a pickle never has ``{`` at offset 8
    after a size below 4 GiB. A file cut inside its header still looks like safetensors, so it is reported
    as damaged instead of as a pickle.
    """
    with path.open("rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 32


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
        return tensor.to(dtype)
    return tensor


def cast_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """A copy of ``state_dict`` moved to ``device`` (when given), floating tensors cast to ``dtype`` (when given).

    Integer and boolean tensors keep their dtype; tensors already in place are not copied.
    """
    return {
        key: _cast(value.to(device=device) if device is not None else value, dtype) for key, value in state_dict.items()
    }


def load_tensors(
    path: str | Path,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    allow_pickle: bool = False,
) -> dict[str, torch.Tensor]:
    """Read every tensor of a weight file onto ``device``, casting floating tensors to ``dtype``.

    Safetensors are read tensor by tensor straight onto the device (no whole second copy in memory).
    Pickled files (``.bin``, ``.pt``, ``.ckpt``...) are refused unless ``allow_pickle=True``, which
    then uses ``torch.load(weights_only=True)``: never unpickle weights you do not trust.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weight file not found: {path}")
    if _is_pickle(path):
        if not allow_pickle:
            raise PickleRefusedError(
                f"{path} is a pickled file: loading it can run arbitrary code. Convert it to safetensors, "
                "or pass allow_pickle=True (uses torch.load(weights_only=True)) if you trust its source."
            )
        try:
            loaded = torch.load(path, map_location=device or "cpu", weights_only=True)
        except Exception as error:
            raise WeightsError(f"cannot read pickled weights {path}: {error}") from error
        if isinstance(loaded, Mapping) and "state_dict" in loaded and isinstance(loaded["state_dict"], Mapping):
            loaded = loaded["state_dict"]
        if not isinstance(loaded, Mapping):
            raise WeightsError(f"{path} does not hold a state dict (got {type(loaded).__name__})")
        return {key: _cast(value, dtype) for key, value in loaded.items() if isinstance(value, torch.Tensor)}
    device_name = str(torch.device(device)) if device is not None else "cpu"
    try:
        with safe_open(str(path), framework="pt", device=device_name) as handle:
            return {key: _cast(handle.get_tensor(key), dtype) for key in handle.keys()}  # noqa: SIM118
    except Exception as error:
        with path.open("rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
        damage = " (the file is truncated: shorter than its header)" if header_size + 8 > path.stat().st_size else ""
        raise WeightsError(f"cannot read safetensors file {path}{damage}: {error}") from error


load_state_dict = load_tensors


def load_weight_files(
    files: Iterable[str | Path],
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    allow_pickle: bool = False,
) -> dict[str, torch.Tensor]:
    """Every tensor of ``files`` (the shards of one checkpoint, as :func:`find_weight_files` lists them) in one
    state dict, each file read with :func:`load_tensors`."""
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_tensors(file, device=device, dtype=dtype, allow_pickle=allow_pickle))
    return state


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` header of a safetensors file (``{}`` when absent)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return dict(handle.metadata() or {})
    except Exception as error:
        raise WeightsError(f"cannot read safetensors header of {path}: {error}") from error


def save_state_dict(
    state_dict: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write tensors to a safetensors file (made contiguous, moved to CPU); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in state_dict.items()}
    save_file(tensors, str(path), metadata=dict(metadata) if metadata else None)
    return path


def save_model_folder(
    path: str | Path, config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], weights_name: str
) -> Path:
    """Write a Hub-style model folder: ``config.json`` (sorted keys) and the safetensors file ``weights_name``.

    The layout diffusers' and transformers' ``from_pretrained`` read (with their own key names in ``state_dict``).
    Returns the folder.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    save_state_dict(state_dict, folder / weights_name, metadata={"format": "pt"})
    return folder


def format_keys(keys: list[str], limit: int = 20) -> str:
    """Join key names for an error message, eliding past ``limit``."""
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_weights_into(
    module: nn.Module,
    weights: str | Path | Mapping[str, torch.Tensor],
    strict: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[list[str], list[str]]:
    """Load ``weights`` (a path or a state dict) into ``module`` by key name.

    With ``strict``, missing keys, unexpected keys and shape mismatches raise :class:`WeightsError`
    naming each of them, and the module is left untouched. Returns ``(missing, unexpected)``.
    A module built on the meta device gets the loaded tensors assigned (no copy, no second allocation).
    """
    source = str(weights) if isinstance(weights, str | Path) else "state dict"
    state = load_tensors(weights, device=device, dtype=dtype) if isinstance(weights, str | Path) else dict(weights)
    expected = module.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        f"{key} (file {tuple(state[key].shape)}, model {tuple(expected[key].shape)})"
        for key in expected
        if key in state and state[key].shape != expected[key].shape
    ]
    problems = []
    if mismatched:
        problems.append(f"shape mismatch: {format_keys(mismatched)}")
    if strict and missing:
        problems.append(f"missing keys: {format_keys(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys: {format_keys(unexpected)}")
    if problems:
        raise WeightsError(f"cannot load {source} into {type(module).__name__}: " + "; ".join(problems))
    on_meta = any(tensor.is_meta for tensor in expected.values())
    known = {key: value for key, value in state.items() if key in expected}
    module.load_state_dict(known, strict=False, assign=on_meta)
    return missing, unexpected
