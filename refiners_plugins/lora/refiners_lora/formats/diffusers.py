"""diffusers / PEFT files: ``unet.<module>.lora_A.weight`` and ``lora_B.weight``.

Alphas come from ``<module>.alpha`` keys when present, else from the ``lora_adapter_metadata``
safetensors header (a PEFT ``LoraConfig`` per component: ``lora_alpha``, ``alpha_pattern``,
``use_rslora``), else ``alpha = rank``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

import torch

from refiners_lora.formats.common import COMPONENTS, PairCollector, ParsedLora

METADATA_KEY = "lora_adapter_metadata"
_COMPONENT = r"(?:(unet|text_encoder|text_encoder_2)\.)?(?:base_model\.model\.)?"
_KEY = re.compile(rf"^{_COMPONENT}(.+)\.(?:(lora_A|lora_B)(?:\.default)?\.weight|(alpha))$")
_PEFT_PREFIX = "base_model.model."


def is_diffusers(keys: list[str]) -> bool:
    """Whether the keys use PEFT's ``lora_A`` / ``lora_B`` names."""
    return any(".lora_A." in key or ".lora_B." in key for key in keys)


def split_metadata(metadata: Mapping[str, str] | None) -> dict[str, dict[str, Any]]:
    """The per-component LoRA configs of a ``lora_adapter_metadata`` header (``{}`` when absent).

    diffusers writes one flat JSON object with ``unet.``/``text_encoder.`` prefixed keys; a single
    model's ``save_lora_adapter`` writes an unprefixed config, taken to be the UNet's.
    """
    if not metadata or METADATA_KEY not in metadata:
        return {}
    config = json.loads(metadata[METADATA_KEY])
    prefixed: dict[str, dict[str, Any]] = {component: {} for component in COMPONENTS}
    found = False
    for key, value in config.items():
        component, _, field = key.partition(".")
        if component in prefixed and field:
            prefixed[component][field] = value
            found = True
    if not found:
        return {"unet": dict(config)}
    return {component: fields for component, fields in prefixed.items() if fields}


def _pattern_value(patterns: Mapping[str, Any] | None, module: str) -> Any:
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return None


def config_alpha(config: Mapping[str, Any], module: str, rank: int) -> float | None:
    """The alpha of ``module`` under a PEFT ``LoraConfig`` dict, as the ``alpha`` of ``alpha / rank``."""
    alpha = _pattern_value(config.get("alpha_pattern"), module)
    if alpha is None:
        alpha = config.get("lora_alpha")
    if alpha is None:
        return None
    if config.get("use_rslora"):
        return float(alpha) * math.sqrt(rank)  # PEFT's rsLoRA scales by alpha / sqrt(rank)
    return float(alpha)


def parse_diffusers(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> ParsedLora:
    """Normalise a diffusers or PEFT state dict; ``metadata`` is the safetensors header, if any."""
    collector = PairCollector()
    unknown: list[str] = []
    peft = False
    for key, tensor in state_dict.items():
        match = _KEY.match(key)
        if match is None:
            unknown.append(key)
            continue
        component, name, lora_part, alpha_part = match.groups()
        peft = peft or _PEFT_PREFIX in key
        part = "alpha" if alpha_part else ("down" if lora_part == "lora_A" else "up")
        collector.add(component or "unet", name, part, key, tensor)
    layers, invalid = collector.build(underscored=False)
    configs = split_metadata(metadata)
    for layer in layers:
        config = configs.get(layer.component)
        if layer.alpha is None and config is not None:
            layer.alpha = config_alpha(config, layer.name, layer.rank)
    return ParsedLora("peft" if peft else "diffusers", layers, unknown + invalid)
