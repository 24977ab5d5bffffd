"""Weights under foreign names: load and export state dicts through a map of foreign module names to our layers.

Formats of other libraries name weights after their own module tree (``down_blocks.0.resnets.0.conv1``).
A *module map* ties each such foreign module name to one of our leaf layers; every tensor of that
layer (``weight``, ``bias``...) is then looked up as ``{foreign name}.{tensor name}``. Loading is strict:
a foreign key with no place, a parameter of ours with no source, or a shape that differs is listed
by name in a :class:`~refiners_core.errors.WeightsError`, and nothing is loaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from refiners_core.errors import WeightsError
from refiners_core.weights import format_keys, load_weights_into

ModuleMap = Mapping[str, nn.Module]

__all__ = ["ModuleMap", "convert_by_module_map", "load_by_module_map", "state_dict_by_module_map"]


def convert_by_module_map(
    model: nn.Module,
    module_map: ModuleMap,
    state_dict: Mapping[str, torch.Tensor],
    source: str = "state dict",
    ignore: Iterable[str] = (),
) -> dict[str, torch.Tensor]:
    """Rename ``state_dict`` from foreign names to ``model``'s own state-dict keys.

    Keys in ``ignore`` may be present or absent. Raises :class:`WeightsError` naming missing and
    unexpected foreign keys, shape mismatches, and any parameter of ``model`` the map leaves uncovered.
    """
    our_names = {id(module): name for name, module in model.named_modules(remove_duplicate=False)}
    ignored = set(ignore)
    converted: dict[str, torch.Tensor] = {}
    expected: set[str] = set()
    missing: list[str] = []
    mismatched: list[str] = []
    for prefix, module in module_map.items():
        our_prefix = our_names.get(id(module))
        if our_prefix is None:
            raise WeightsError(f"module map error: {prefix!r} maps to a module outside {type(model).__name__}")
        for tensor_name, current in module.state_dict(keep_vars=True).items():
            foreign_key = f"{prefix}.{tensor_name}"
            expected.add(foreign_key)
            if foreign_key not in state_dict:
                missing.append(foreign_key)
                continue
            tensor = state_dict[foreign_key]
            if tensor.shape != current.shape:
                mismatched.append(f"{foreign_key} (file {tuple(tensor.shape)}, model {tuple(current.shape)})")
                continue
            converted[f"{our_prefix}.{tensor_name}" if our_prefix else tensor_name] = tensor
    unexpected = sorted(key for key in state_dict if key not in expected and key not in ignored)
    covered = {id(value) for module in module_map.values() for value in module.state_dict(keep_vars=True).values()}
    uncovered = [name for name, value in model.state_dict(keep_vars=True).items() if id(value) not in covered]
    problems = []
    if missing:
        problems.append(f"missing keys: {format_keys(sorted(missing))}")
    if unexpected:
        problems.append(f"unexpected keys: {format_keys(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch: {format_keys(mismatched)}")
    if uncovered:
        problems.append(f"parameters with no source key: {format_keys(uncovered)}")
    if problems:
        raise WeightsError(f"cannot load {source} into {type(model).__name__}: " + "; ".join(problems))
    return converted


def load_by_module_map(
    model: nn.Module,
    module_map: ModuleMap,
    state_dict: Mapping[str, torch.Tensor],
    source: str = "state dict",
    ignore: Iterable[str] = (),
) -> None:
    """Load a foreign-named ``state_dict`` into ``model`` (strict; meta-built models get tensors assigned)."""
    converted = convert_by_module_map(model, module_map, state_dict, source=source, ignore=ignore)
    load_weights_into(model, converted, strict=True)


def state_dict_by_module_map(module_map: ModuleMap) -> dict[str, torch.Tensor]:
    """The tensors of every mapped layer under their foreign names (the inverse of loading)."""
    return {
        f"{prefix}.{tensor_name}": tensor
        for prefix, module in module_map.items()
        for tensor_name, tensor in module.state_dict().items()
    }
