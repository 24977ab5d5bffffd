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

from refiners_lora.deltas.base import scalar_alpha
from refiners_lora.errors import LoraError
from refiners_lora.formats.common import COMPONENTS, DeltaWeights, LoraWeights, PairCollector, ParsedLora

METADATA_KEY = "lora_adapter_metadata"
_COMPONENT = r"(?:(unet|text_encoder|text_encoder_2)\.)?(?:base_model\.model\.)?"
_KEY = re.compile(rf"^{_COMPONENT}(.+)\.(?:(lora_A|lora_B)(?:\.default)?\.weight|(alpha))$")
_PEFT_EXTRA = re.compile(
    rf"^{_COMPONENT}(.+)\.(lora_magnitude_vector|hada_w[12]_[ab]|hada_t[12]|lokr_w[12](?:_[ab])?|lokr_t2|oft_R|boft_[Rs])"
    r"(?:\.default)?(?:\.weight)?$"
)
_PEFT_PREFIX = "base_model.model."


def is_diffusers(keys: list[str]) -> bool:
    """Whether the keys use PEFT's names (``lora_A`` / ``lora_B``, or PEFT LoHa / LoKr / OFT / BOFT ``hada_`` /
    ``lokr_`` / ``oft_R`` / ``boft_R`` without kohya prefixes)."""
    return any(".lora_A." in key or ".lora_B." in key or _PEFT_EXTRA.match(key) for key in keys)


def load_adapter_config(text: str, source: str) -> dict[str, Any]:
    """A ``lora_adapter_metadata`` header or ``adapter_config.json`` as a dict, or a :class:`LoraError` naming
    ``source`` when it is not a JSON object."""
    try:
        config = json.loads(text)
    except ValueError as error:
        raise LoraError(f"{source} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise LoraError(f"{source} is not a JSON object")
    return config


def split_metadata(metadata: Mapping[str, str] | None) -> dict[str, dict[str, Any]]:
    """The per-component LoRA configs of a ``lora_adapter_metadata`` header (``{}`` when absent).

    diffusers writes one flat JSON object with ``unet.``/``text_encoder.`` prefixed keys; a single
    model's ``save_lora_adapter`` writes an unprefixed config, taken to be the UNet's.
    """
    if not metadata or METADATA_KEY not in metadata:
        return {}
    config = load_adapter_config(metadata[METADATA_KEY], f"the {METADATA_KEY} header (or adapter_config.json)")
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
        alpha = config.get("alpha")  # LoHa / LoKr configs
    if alpha is None:
        return None
    value = scalar_alpha(f"{METADATA_KEY} alpha of {module}", alpha)
    assert value is not None
    if config.get("use_rslora"):
        return value * math.sqrt(rank)  # PEFT's rsLoRA scales by alpha / sqrt(rank)
    return value


def config_rank(config: Mapping[str, Any], module: str) -> int | None:
    """The rank of ``module`` under a PEFT config dict (``rank_pattern``, else ``r``)."""
    rank = _pattern_value(config.get("rank_pattern"), module)
    if rank is None:
        rank = config.get("r")
    return None if rank is None else int(rank)


def parse_diffusers(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> ParsedLora:
    """Normalise a diffusers or PEFT state dict; ``metadata`` is the safetensors header, if any."""
    collector = PairCollector()
    unknown: list[str] = []
    extras: dict[tuple[str, str], dict[str, tuple[str, torch.Tensor]]] = {}
    peft = False
    for key, tensor in state_dict.items():
        match = _KEY.match(key)
        if match is None:
            extra = _PEFT_EXTRA.match(key)
            if extra is None:
                unknown.append(key)
            else:
                component, name, suffix = extra.groups()
                peft = peft or _PEFT_PREFIX in key
                extras.setdefault((component or "unet", name), {})[suffix] = (key, tensor)
            continue
        component, name, lora_part, alpha_part = match.groups()
        peft = peft or _PEFT_PREFIX in key
        part = "alpha" if alpha_part else ("down" if lora_part == "lora_A" else "up")
        collector.add(component or "unet", name, part, key, tensor)
    pairs, invalid = collector.build(underscored=False)
    configs = split_metadata(metadata)
    layers: list[LoraWeights | DeltaWeights] = []
    for layer in pairs:
        config = configs.get(layer.component)
        if layer.alpha is None and config is not None:
            layer.alpha = config_alpha(config, layer.name, layer.rank)
        magnitude = extras.pop((layer.component, layer.name), {}).get("lora_magnitude_vector")
        if magnitude is None:
            layers.append(layer)
            continue
        tensors = {"lora_down.weight": layer.down, "lora_up.weight": layer.up, "lora_magnitude_vector": magnitude[1]}
        keys = (*layer.keys, magnitude[0])
        layers.append(DeltaWeights(layer.component, layer.name, "lora", tensors, layer.alpha, keys, convention="peft"))
    for (component, name), parts in extras.items():
        keys = tuple(key for key, _ in parts.values())
        algorithms = {suffix[:4] for suffix in parts}  # lora, hada, lokr, oft_, boft
        if len(algorithms) != 1 or algorithms == {"lora"}:
            invalid.extend(keys)  # a magnitude without its LoRA pair, or mixed algorithms
            continue
        config = configs.get(component, {})
        rank = config_rank(config, name)
        alpha = config_alpha(config, name, rank or 1) if config else None
        algorithm = {"hada": "loha", "lokr": "lokr", "oft_": "peft_oft", "boft": "peft_boft"}[algorithms.pop()]
        tensors = {suffix: tensor for suffix, (_, tensor) in parts.items()}
        entry = DeltaWeights(component, name, algorithm, tensors, alpha, keys, convention="peft", rank=rank)
        if algorithm == "peft_oft":
            if config.get("coft"):
                raise LoraError(f"{keys[0]}: PEFT's constrained OFT (coft) is not supported")
            if config.get("use_cayley_neumann", True):
                entry.neumann_terms = int(config.get("num_cayley_neumann_terms", 5))
        layers.append(entry)
    return ParsedLora("peft" if peft else "diffusers", layers, unknown + invalid)
