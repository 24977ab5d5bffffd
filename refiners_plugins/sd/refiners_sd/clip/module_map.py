"""Load a foreign state dict into a Chain through a map of foreign module names to our leaf modules.

Shared by the text encoders and the VAE (and usable by a CLIP vision tower): every foreign key must
land on a parameter of ours and every parameter of ours must be fed, otherwise a
:class:`~refiners_core.WeightsError` lists the offending keys in the foreign naming.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from refiners_core import WeightsError
from refiners_core.weights import load_weights_into

__all__ = ["convert_by_module_map", "load_by_module_map"]


def _format(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def convert_by_module_map(
    model: nn.Module,
    module_map: Mapping[str, nn.Module],
    state_dict: Mapping[str, torch.Tensor],
    source: str = "state dict",
    ignore: Iterable[str] = (),
) -> dict[str, torch.Tensor]:
    """Rename ``state_dict`` (foreign names) to ``model``'s keys using ``module_map``.

    ``module_map`` maps a foreign module prefix (``"encoder.layers.0.mlp.fc1"``) to one of our leaf
    modules; each tensor of that leaf (``weight``, ``bias``...) is looked up under ``{prefix}.{name}``.
    Keys listed in ``ignore`` may be present or absent. Raises :class:`WeightsError` naming missing
    and unexpected foreign keys, and any parameter of ``model`` the map does not cover.
    """
    our_names = {id(module): name for name, module in model.named_modules(remove_duplicate=False)}
    ignored = set(ignore)
    converted: dict[str, torch.Tensor] = {}
    expected: set[str] = set()
    missing: list[str] = []
    for prefix, module in module_map.items():
        our_prefix = our_names.get(id(module))
        if our_prefix is None:
            raise WeightsError(f"internal mapping error: {prefix} maps to a module outside {type(model).__name__}")
        for tensor_name in module.state_dict():
            foreign_key = f"{prefix}.{tensor_name}"
            expected.add(foreign_key)
            if foreign_key in state_dict:
                converted[f"{our_prefix}.{tensor_name}" if our_prefix else tensor_name] = state_dict[foreign_key]
            else:
                missing.append(foreign_key)
    unexpected = sorted(key for key in state_dict if key not in expected and key not in ignored)
    uncovered = sorted(key for key in model.state_dict() if key not in converted and not missing)
    problems = []
    if missing:
        problems.append(f"missing keys: {_format(sorted(missing))}")
    if unexpected:
        problems.append(f"unexpected keys: {_format(unexpected)}")
    if uncovered:
        problems.append(f"parameters with no source key: {_format(uncovered)}")
    if problems:
        raise WeightsError(f"cannot load {source} into {type(model).__name__}: " + "; ".join(problems))
    return converted


def load_by_module_map(
    model: nn.Module,
    module_map: Mapping[str, nn.Module],
    state_dict: Mapping[str, torch.Tensor],
    source: str = "state dict",
    ignore: Iterable[str] = (),
) -> None:
    """Convert ``state_dict`` with :func:`convert_by_module_map` and load it into ``model`` (strict)."""
    converted = convert_by_module_map(model, module_map, state_dict, source=source, ignore=ignore)
    load_weights_into(model, converted, strict=True)
