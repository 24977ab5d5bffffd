"""kohya / A1111 files: ``lora_unet_<name>.lora_down.weight``, ``.lora_up.weight``, ``.alpha``.

Module names use ``_`` for ``.``; they are resolved later against the model's known names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from refiners_lora.formats.common import PairCollector, ParsedLora

_KEY = re.compile(r"^lora_(unet|te|te1|te2)_(.+)\.(lora_down\.weight|lora_up\.weight|alpha)$")
_COMPONENTS = {"unet": "unet", "te": "text_encoder", "te1": "text_encoder", "te2": "text_encoder_2"}
_PARTS = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}
PREFIXES = tuple(f"lora_{prefix}_" for prefix in _COMPONENTS)


def is_kohya(keys: list[str]) -> bool:
    """Whether the keys use kohya prefixes."""
    return any(key.startswith(PREFIXES) for key in keys)


def parse_kohya(state_dict: Mapping[str, torch.Tensor]) -> ParsedLora:
    """Normalise a kohya state dict (names stay underscored)."""
    collector = PairCollector()
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        match = _KEY.match(key)
        if match is None:
            unknown.append(key)
            continue
        prefix, name, part = match.groups()
        collector.add(_COMPONENTS[prefix], name, _PARTS[part], key, tensor)
    layers, invalid = collector.build(underscored=True)
    return ParsedLora("kohya", layers, unknown + invalid)


def kohya_key_prefix(component: str) -> str:
    """The kohya key prefix written for ``component`` (``lora_unet``, ``lora_te1``, ``lora_te2``)."""
    return {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}[component]
