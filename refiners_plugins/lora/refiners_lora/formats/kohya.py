"""kohya and LyCORIS files: ``lora_unet_<module_with_underscores>.<suffix>``.

Prefixes ``lora_unet_``, ``lora_te_`` / ``lora_te1_`` (first text encoder), ``lora_te2_`` (second) and
``lycoris_`` (LyCORIS' own wrapper, UNet names). A layer holding only ``lora_down.weight``,
``lora_up.weight`` and ``alpha`` is a plain LoRA; any other suffix set (``hada_*``, ``lokr_*``,
``lora_mid.weight``, ``dora_scale``, ``diff``, ``weight`` + ``on_input``, ``oft_blocks``,
``a1.weight``...) becomes a :class:`~refiners_lora.formats.common.DeltaWeights` of its algorithm.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from refiners_lora.deltas.base import scalar_alpha
from refiners_lora.formats.common import (
    ALGORITHM_SUFFIXES,
    SHARED_SUFFIXES,
    DeltaWeights,
    LoraWeights,
    ParsedLora,
    algorithm_of,
)

_COMPONENTS = {"unet": "unet", "te": "text_encoder", "te1": "text_encoder", "te2": "text_encoder_2"}
_SUFFIXES = sorted([*ALGORITHM_SUFFIXES, *SHARED_SUFFIXES], key=len, reverse=True)
_KEY = re.compile(
    r"^(lora_unet|lora_te|lora_te1|lora_te2|lycoris)_(.+?)\.(" + "|".join(map(re.escape, _SUFFIXES)) + r")$"
)
PREFIXES = (*(f"lora_{prefix}_" for prefix in _COMPONENTS), "lycoris_")
_PLAIN = {"lora_down.weight", "lora_up.weight", "alpha"}


def is_kohya(keys: list[str]) -> bool:
    """Whether the keys use kohya (or LyCORIS) prefixes."""
    return any(key.startswith(PREFIXES) for key in keys)


def _alpha(parts: dict[str, tuple[str, torch.Tensor]]) -> float | None:
    if "alpha" not in parts:
        return None
    key, tensor = parts["alpha"]
    return scalar_alpha(key, tensor)


def parse_kohya(state_dict: Mapping[str, torch.Tensor]) -> ParsedLora:
    """Normalise a kohya / LyCORIS state dict (names stay underscored)."""
    grouped: dict[tuple[str, str], dict[str, tuple[str, torch.Tensor]]] = {}
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        match = _KEY.match(key)
        if match is None:
            unknown.append(key)
            continue
        prefix, name, suffix = match.groups()
        component = "unet" if prefix == "lycoris" else _COMPONENTS[prefix.removeprefix("lora_")]
        grouped.setdefault((component, name), {})[suffix] = (key, tensor)
    layers: list[LoraWeights | DeltaWeights] = []
    invalid: list[str] = []
    for (component, name), parts in grouped.items():
        keys = tuple(key for key, _ in parts.values())
        suffixes = set(parts)
        if suffixes <= _PLAIN:
            if not {"lora_down.weight", "lora_up.weight"} <= suffixes:
                invalid.extend(keys)
                continue
            down, up = parts["lora_down.weight"][1], parts["lora_up.weight"][1]
            layers.append(LoraWeights(component, name, down, up, _alpha(parts), keys, underscored=True))
            continue
        tensors = {suffix: tensor for suffix, (_, tensor) in parts.items() if suffix != "alpha"}
        algorithm = algorithm_of(suffixes, tensors)
        if algorithm is None:
            invalid.extend(keys)
            continue
        layers.append(DeltaWeights(component, name, algorithm, tensors, _alpha(parts), keys, underscored=True))
    return ParsedLora("kohya", layers, unknown + invalid)


def kohya_key_prefix(component: str, two_text_encoders: bool) -> str:
    """The kohya key prefix written for ``component``: ``lora_unet``, ``lora_te`` (a single text encoder, as
    for SD 1.x), ``lora_te1`` and ``lora_te2`` (two text encoders, as for SDXL)."""
    if component == "text_encoder":
        return "lora_te1" if two_text_encoders else "lora_te"
    return {"unet": "lora_unet", "text_encoder_2": "lora_te2"}[component]
