"""Old diffusers files (attention processors and LoRA-compatible layers).

``<attn>.processor.to_q_lora.down.weight`` (the ``to_q`` of ``<attn>``; ``to_out_lora`` targets
``to_out.0``, or ``out_proj`` in a text encoder), ``<module>.lora.down.weight`` and
``<module>.lora_linear_layer.down.weight``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from refiners_lora.formats.common import PairCollector, ParsedLora

_COMPONENT = r"(?:(unet|text_encoder|text_encoder_2)\.)?"
_PROCESSOR = re.compile(rf"^{_COMPONENT}(.+?)(?:\.processor)?\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
_LAYER = re.compile(rf"^{_COMPONENT}(.+)\.(?:lora|lora_linear_layer)\.(down|up)\.weight$")
_ALPHA = re.compile(rf"^{_COMPONENT}(.+)\.alpha$")
_UNET_PROJECTIONS = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
_TEXT_PROJECTIONS = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}


def is_diffusers_old(keys: list[str]) -> bool:
    """Whether the keys use the old diffusers LoRA names."""
    return any(_PROCESSOR.match(key) or _LAYER.match(key) for key in keys)


def parse_diffusers_old(state_dict: Mapping[str, torch.Tensor]) -> ParsedLora:
    """Normalise an old diffusers state dict."""
    collector = PairCollector()
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        if match := _PROCESSOR.match(key):
            component, attention, projection, part = match.groups()
            component = component or "unet"
            projections = _UNET_PROJECTIONS if component == "unet" else _TEXT_PROJECTIONS
            collector.add(component, f"{attention}.{projections[projection]}", part, key, tensor)
        elif match := _LAYER.match(key):
            component, name, part = match.groups()
            collector.add(component or "unet", name, part, key, tensor)
        elif match := _ALPHA.match(key):
            component, name = match.groups()
            collector.add(component or "unet", name, "alpha", key, tensor)
        else:
            unknown.append(key)
    layers, invalid = collector.build(underscored=False)
    return ParsedLora("diffusers-old", layers, unknown + invalid)
