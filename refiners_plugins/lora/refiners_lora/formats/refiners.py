"""refiners-lora's own format: ``<component>.<module>.down.weight``, ``.up.weight`` and ``.alpha``.

Files carry the safetensors header ``{"refiners_lora": "1"}``; ``alpha`` is always written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from refiners_lora.formats.common import PairCollector, ParsedLora

METADATA_KEY = "refiners_lora"
_KEY = re.compile(r"^(unet|text_encoder|text_encoder_2)\.(.+)\.(down\.weight|up\.weight|alpha)$")
_PARTS = {"down.weight": "down", "up.weight": "up", "alpha": "alpha"}


def is_refiners(keys: list[str], metadata: Mapping[str, str] | None) -> bool:
    """Whether the file is in refiners-lora's format (header marker, or every key fits the layout)."""
    if metadata and METADATA_KEY in metadata:
        return True
    return bool(keys) and all(_KEY.match(key) for key in keys)


def parse_refiners(state_dict: Mapping[str, torch.Tensor]) -> ParsedLora:
    """Normalise a refiners-lora state dict."""
    collector = PairCollector()
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        match = _KEY.match(key)
        if match is None:
            unknown.append(key)
            continue
        component, name, part = match.groups()
        collector.add(component, name, _PARTS[part], key, tensor)
    layers, invalid = collector.build(underscored=False)
    return ParsedLora("refiners", layers, unknown + invalid)
