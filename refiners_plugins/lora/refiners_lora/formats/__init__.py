"""Format detection and parsing: every supported layout becomes a :class:`ParsedLora`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from refiners_core.errors import PickleRefusedError, WeightsError
from refiners_core.model_folder import find_weight_files
from refiners_core.weights import format_keys, load_tensors, read_metadata
from refiners_lora.deltas.base import nonfinite_keys
from refiners_lora.errors import LoraError
from refiners_lora.formats.common import LoraWeights, ParsedLora
from refiners_lora.formats.diffusers import METADATA_KEY as DIFFUSERS_METADATA_KEY
from refiners_lora.formats.diffusers import is_diffusers, load_adapter_config, parse_diffusers
from refiners_lora.formats.diffusers_old import is_diffusers_old, parse_diffusers_old
from refiners_lora.formats.kohya import is_kohya, parse_kohya
from refiners_lora.formats.refiners import METADATA_KEY as REFINERS_MARKER
from refiners_lora.formats.refiners import is_refiners, parse_refiners

__all__ = ["LoraWeights", "ParsedLora", "detect_format", "parse_lora", "read_lora_file"]

WEIGHT_STEMS = ("pytorch_lora_weights", "adapter_model")


def detect_format(keys: list[str], metadata: Mapping[str, str] | None = None) -> str:
    """The layout of a LoRA state dict, from its keys (and header): ``kohya``, ``diffusers``
    (PEFT included), ``diffusers-old`` or ``refiners``.

    Raises:
        LoraError: when no known layout fits.
    """
    if metadata and REFINERS_MARKER in metadata:
        return "refiners"
    if is_kohya(keys):
        return "kohya"
    if is_diffusers(keys):
        return "diffusers"
    if is_diffusers_old(keys):
        return "diffusers-old"
    if is_refiners(keys, metadata):
        return "refiners"
    raise LoraError(f"not a LoRA file in a known format (kohya, diffusers, PEFT, old diffusers): {format_keys(keys)}")


def _weight_file(path: Path, allow_pickle: bool = False) -> Path:
    if not path.is_dir():
        return path
    try:
        files = find_weight_files(path, WEIGHT_STEMS, allow_pickle=allow_pickle, any_single_file=True, what="LoRA file")
    except PickleRefusedError:
        raise
    except WeightsError as error:
        raise LoraError(f"{error}: pass the file itself") from None
    if len(files) > 1:
        raise LoraError(f"{path} holds a sharded LoRA ({len(files)} files): pass one file")
    return files[0]


def read_lora_file(path: str | Path, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a LoRA file (or the LoRA file of a folder): its tensors on CPU, and its safetensors header.

    A PEFT ``adapter_config.json`` next to the file stands in for a missing ``lora_adapter_metadata``.
    """
    file = _weight_file(Path(path), allow_pickle)
    tensors = load_tensors(file, allow_pickle=allow_pickle)
    metadata = read_metadata(file) if file.suffix == ".safetensors" else {}
    source = f"the {DIFFUSERS_METADATA_KEY} header of {file}"
    peft_config = file.with_name("adapter_config.json")
    if DIFFUSERS_METADATA_KEY not in metadata and peft_config.is_file():
        try:
            metadata[DIFFUSERS_METADATA_KEY] = peft_config.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise LoraError(f"cannot read {peft_config}: {error}") from None
        source = str(peft_config)
    if DIFFUSERS_METADATA_KEY in metadata:
        load_adapter_config(metadata[DIFFUSERS_METADATA_KEY], source)  # checked now, to name the file
    bad = nonfinite_keys(tensors)
    if bad:
        raise LoraError(f"{file} holds NaN or infinite values in {format_keys(bad)}")
    return tensors, metadata


def parse_lora(
    state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None, format: str | None = None
) -> ParsedLora:
    """Normalise a LoRA state dict; ``format`` forces a layout instead of detecting it."""
    layout = format or detect_format(list(state_dict), metadata)
    if layout == "kohya":
        return parse_kohya(state_dict)
    if layout in ("diffusers", "peft"):
        return parse_diffusers(state_dict, metadata)
    if layout == "diffusers-old":
        return parse_diffusers_old(state_dict)
    if layout == "refiners":
        return parse_refiners(state_dict)
    raise LoraError(f"unknown LoRA format {layout!r}: expected kohya, diffusers, peft, diffusers-old or refiners")
