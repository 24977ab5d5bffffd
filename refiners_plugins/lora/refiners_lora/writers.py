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
from refiners_lora.formats.diffusers import METADATA_KEY as DIFFUSERS_METADATA_KEY
from refiners_lora.formats.kohya import kohya_key_prefix
from refiners_lora.formats.refiners import METADATA_KEY as REFINERS_METADATA_KEY

LoraTensors = Mapping[tuple[str, str], tuple[torch.Tensor, torch.Tensor, float]]
SAVE_FORMATS = ("diffusers", "kohya", "refiners")


def _most_common(values: Iterable[Any]) -> Any:
    return Counter(values).most_common(1)[0][0]


def _alpha_value(alpha: float) -> float | int:
    return int(alpha) if float(alpha).is_integer() else alpha


def peft_config(layers: Mapping[str, tuple[torch.Tensor, torch.Tensor, float]]) -> dict[str, Any]:
    """A PEFT ``LoraConfig`` dict describing ``layers`` (module -> (down, up, alpha)) exactly.

    The most common rank and alpha become ``r`` and ``lora_alpha``; the others go to
    ``rank_pattern`` / ``alpha_pattern`` keyed by full module name.
    """
    ranks = {module: int(down.shape[0]) for module, (down, _, _) in layers.items()}
    alphas = {module: float(alpha) for module, (_, _, alpha) in layers.items()}
    rank = _most_common(ranks.values())
    alpha = _most_common(alphas.values())
    return {
        "r": rank,
        "lora_alpha": _alpha_value(alpha),
        "rank_pattern": {module: value for module, value in ranks.items() if value != rank},
        "alpha_pattern": {module: _alpha_value(value) for module, value in alphas.items() if value != alpha},
        "target_modules": sorted(layers),
        "use_rslora": False,
        "use_dora": False,
        "lora_bias": False,
    }


def diffusers_state_dict(tensors: LoraTensors) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Keys ``<component>.<module>.lora_A.weight`` / ``lora_B.weight``, and the ``lora_adapter_metadata`` header."""
    state: dict[str, torch.Tensor] = {}
    by_component: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor, float]]] = {}
    for (component, module), (down, up, alpha) in tensors.items():
        state[f"{component}.{module}.lora_A.weight"] = down
        state[f"{component}.{module}.lora_B.weight"] = up
        by_component.setdefault(component, {})[module] = (down, up, alpha)
    metadata: dict[str, Any] = {}
    for component, layers in by_component.items():
        metadata.update({f"{component}.{key}": value for key, value in peft_config(layers).items()})
    header = {"format": "pt", DIFFUSERS_METADATA_KEY: json.dumps(metadata, indent=2, sort_keys=True)}
    return state, header


def kohya_state_dict(tensors: LoraTensors) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Keys ``lora_unet_<module_with_underscores>.lora_down.weight`` / ``lora_up.weight`` / ``alpha``."""
    state: dict[str, torch.Tensor] = {}
    for (component, module), (down, up, alpha) in tensors.items():
        prefix = f"{kohya_key_prefix(component)}_{module.replace('.', '_')}"
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
    for (component, module), tensors in states.items():
        prefix = f"{kohya_key_prefix(component)}_{module.replace('.', '_')}"
        for suffix, tensor in tensors.items():
            state[f"{prefix}.{suffix}"] = tensor.detach().contiguous()
    return save_state_dict(state, path, metadata={"format": "pt"})


def write_lora(tensors: LoraTensors, path: str | Path, format: str = "diffusers") -> Path:
    """Write ``tensors`` ((component, module) -> (down, up, alpha)) to ``path`` in ``format``."""
    writers = {"diffusers": diffusers_state_dict, "kohya": kohya_state_dict, "refiners": refiners_state_dict}
    if format not in writers:
        raise LoraError(f"cannot save LoRAs as {format!r}: expected one of {', '.join(SAVE_FORMATS)}")
    state, header = writers[format](tensors)
    return save_state_dict(state, path, metadata=header)
