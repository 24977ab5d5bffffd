"""Writing LoRAs to safetensors files in diffusers, kohya or refiners-lora layout."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from refiners_core.weights import save_state_dict
from refiners_lora.errors import LoraError
from refiners_lora.formats.common import TRANSFORMERS_WRAPPER
from refiners_lora.formats.diffusers import METADATA_KEY as DIFFUSERS_METADATA_KEY
from refiners_lora.formats.kohya import kohya_key_prefix
from refiners_lora.formats.refiners import METADATA_KEY as REFINERS_METADATA_KEY

LoraTensors = Mapping[tuple[str, str], tuple[torch.Tensor, torch.Tensor, float]]
PeftLayers = Mapping[tuple[str, str], tuple[Mapping[str, torch.Tensor], Mapping[str, Any]]]
# PEFT config fields that may differ per module, and the pattern field that holds the exceptions
PATTERNS = {"r": "rank_pattern", "lora_alpha": "alpha_pattern", "alpha": "alpha_pattern"}
# PEFT flags that apply only where a layer allows them (a Tucker core on kxk convolutions, a decomposed w1
# where the rank is small enough): set when any layer uses them
ANY_OF = ("decompose_both", "use_effective_conv2d")
SAVE_FORMATS = ("diffusers", "kohya", "refiners")
# the children of transformers' CLIP text model under its `text_model` level
CLIP_TEXT_CHILDREN = ("embeddings", "encoder", "final_layer_norm")


def _most_common(values: Iterable[Any]) -> Any:
    return Counter(values).most_common(1)[0][0]


def _alpha_value(alpha: float) -> float | int:
    return int(alpha) if float(alpha).is_integer() else alpha


def _config_name(component: str, module: str) -> str:
    # PEFT matches target names as suffixes: without `text_model.` they fit CLIPTextModel with and without that
    # level (transformers >= 5 flattens it, and diffusers then drops it from the keys but not from the config)
    return module.removeprefix(TRANSFORMERS_WRAPPER) if component.startswith("text_encoder") else module


def peft_config(layers: Mapping[str, Mapping[str, Any]], component: str = "unet") -> dict[str, Any]:
    """One PEFT config dict describing ``layers`` (module -> the config fields of its layer) of ``component``.

    The most common rank and alpha become ``r`` and ``lora_alpha`` (or ``alpha``); the others go to
    ``rank_pattern`` / ``alpha_pattern``. Module names are full, less a text encoder's ``text_model.``.
    The flags of :data:`ANY_OF` are set when any layer uses them; every other field must be the same for
    all layers (the error names ``component`` otherwise).
    """
    config: dict[str, Any] = {}
    for field in sorted({field for fields in layers.values() for field in fields}):
        values = {_config_name(component, module): fields.get(field) for module, fields in layers.items()}
        if field in PATTERNS:
            common = _most_common(values.values())
            pattern = {module: value for module, value in values.items() if value != common}
            config[field] = common
            config.setdefault(PATTERNS[field], {}).update(pattern)
        elif field in ANY_OF:
            config[field] = any(bool(value) for value in values.values())
        elif len({json.dumps(value) for value in values.values()}) == 1:
            config[field] = next(iter(values.values()))
        else:
            found = ", ".join(sorted({str(value) for value in values.values()}))
            raise LoraError(f"cannot write the {component} layers as one PEFT config: their {field} differ ({found})")
    for field in ("lora_alpha", "alpha"):
        if field in config:
            config[field] = _alpha_value(config[field])
    if "alpha_pattern" in config:
        config["alpha_pattern"] = {module: _alpha_value(value) for module, value in config["alpha_pattern"].items()}
    config["target_modules"] = sorted(_config_name(component, module) for module in layers)
    return config


def lora_config_fields(rank: int, alpha: float) -> dict[str, Any]:
    """The PEFT ``LoraConfig`` fields of one plain LoRA layer (no rsLoRA, no DoRA, no bias)."""
    return {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": float(alpha),
        "use_rslora": False,
        "use_dora": False,
        "lora_bias": False,
    }


def _adapter_metadata(configs: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, str]:
    # one flat JSON object with `<component>.` prefixed fields, as diffusers writes it
    metadata: dict[str, Any] = {}
    for component, layers in configs.items():
        metadata.update({f"{component}.{key}": value for key, value in peft_config(layers, component).items()})
    return {"format": "pt", DIFFUSERS_METADATA_KEY: json.dumps(metadata, indent=2, sort_keys=True)}


def diffusers_state_dict(tensors: LoraTensors) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Keys ``<component>.<module>.lora_A.weight`` / ``lora_B.weight``, and the ``lora_adapter_metadata`` header."""
    state: dict[str, torch.Tensor] = {}
    configs: dict[str, dict[str, dict[str, Any]]] = {}
    for (component, module), (down, up, alpha) in tensors.items():
        state[f"{component}.{module}.lora_A.weight"] = down
        state[f"{component}.{module}.lora_B.weight"] = up
        configs.setdefault(component, {})[module] = lora_config_fields(int(down.shape[0]), alpha)
    return state, _adapter_metadata(configs)


def kohya_prefixes(targets: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The kohya key prefix of each ``(component, module)``: ``lora_unet_<module_with_underscores>``, and for text
    encoders ``lora_te_`` (or ``lora_te1_`` / ``lora_te2_`` with two) plus the module name; a transformers CLIP
    name is written under ``text_model``, as kohya's trainers write it, whether or not the loaded file had that
    level (other names, e.g. a custom map's, are written as they are)."""
    targets = list(targets)
    two_text_encoders = any(component == "text_encoder_2" for component, _ in targets)
    prefixes: dict[tuple[str, str], str] = {}
    for component, module in targets:
        name = module
        if component != "unet" and name.split(".")[0] in CLIP_TEXT_CHILDREN:
            name = TRANSFORMERS_WRAPPER + name
        prefixes[component, module] = f"{kohya_key_prefix(component, two_text_encoders)}_{name.replace('.', '_')}"
    return prefixes


def kohya_state_dict(tensors: LoraTensors) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Keys ``lora_unet_<module_with_underscores>.lora_down.weight`` / ``lora_up.weight`` / ``alpha`` (text
    encoders: ``lora_te_``, or ``lora_te1_`` and ``lora_te2_`` when there are two)."""
    state: dict[str, torch.Tensor] = {}
    prefixes = kohya_prefixes(tensors)
    for target, (down, up, alpha) in tensors.items():
        prefix = prefixes[target]
        state[f"{prefix}.lora_down.weight"] = down
        state[f"{prefix}.lora_up.weight"] = up
        state[f"{prefix}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
    return state, {"format": "pt"}


def refiners_state_dict(tensors: LoraTensors) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Keys ``<component>.<module>.down.weight`` / ``up.weight`` / ``alpha``, header ``refiners_lora``."""
    state: dict[str, torch.Tensor] = {}
    for (component, module), (down, up, alpha) in tensors.items():
        state[f"{component}.{module}.down.weight"] = down
        state[f"{component}.{module}.up.weight"] = up
        state[f"{component}.{module}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
    return state, {"format": "pt", REFINERS_METADATA_KEY: "1"}


def write_deltas(states: Mapping[tuple[str, str], Mapping[str, torch.Tensor]], path: str | Path) -> Path:
    """Write weight deltas ((component, module) -> {key suffix: tensor}) as a kohya / LyCORIS file:
    ``lora_unet_<module_with_underscores>.<suffix>``."""
    state: dict[str, torch.Tensor] = {}
    prefixes = kohya_prefixes(states)
    for target, tensors in states.items():
        prefix = prefixes[target]
        for suffix, tensor in tensors.items():
            state[f"{prefix}.{suffix}"] = tensor.detach().contiguous()
    return save_state_dict(state, path, metadata={"format": "pt"})


def write_peft(layers: PeftLayers, path: str | Path) -> Path:
    """Write layers in PEFT's own terms ((component, module) -> (tensors by PEFT key suffix, config fields))
    as a diffusers file: keys ``<component>.<module>.<suffix>`` and one PEFT config per component in the
    ``lora_adapter_metadata`` header."""
    state: dict[str, torch.Tensor] = {}
    configs: dict[str, dict[str, Mapping[str, Any]]] = {}
    for (component, module), (tensors, config) in layers.items():
        for suffix, tensor in tensors.items():
            state[f"{component}.{module}.{suffix}"] = tensor.detach().contiguous()
        configs.setdefault(component, {})[module] = config
    return save_state_dict(state, path, metadata=_adapter_metadata(configs))


def write_lora(tensors: LoraTensors, path: str | Path, format: str = "diffusers") -> Path:
    """Write ``tensors`` ((component, module) -> (down, up, alpha)) to ``path`` in ``format``."""
    writers = {"diffusers": diffusers_state_dict, "kohya": kohya_state_dict, "refiners": refiners_state_dict}
    if format not in writers:
        raise LoraError(f"cannot save LoRAs as {format!r}: expected one of {', '.join(SAVE_FORMATS)}")
    state, header = writers[format](tensors)
    return save_state_dict(state, path, metadata=header)
