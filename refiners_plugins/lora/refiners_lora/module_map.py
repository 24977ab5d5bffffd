"""Name -> layer maps: how LoRA module names find their target layers in a model."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping

from torch import nn

from refiners_lora.errors import LoraError

ModuleMap = Mapping[str, nn.Module]
LORA_TARGET_TYPES = (nn.Linear, nn.Conv2d)


def chain_module_map(model: nn.Module) -> dict[str, nn.Module]:
    """Every Linear and Conv2d of ``model`` by its dotted path (the names ``Chain.layer`` accepts)."""
    return {name: module for name, module in model.named_modules() if isinstance(module, LORA_TARGET_TYPES)}


def _sd_function(model: nn.Module, name: str) -> Callable[[nn.Module], ModuleMap] | None:
    if not type(model).__module__.startswith("refiners_sd"):
        return None
    try:
        refiners_sd = importlib.import_module("refiners_sd")
    except ImportError:
        return None
    return getattr(refiners_sd, name, None)


def resolve_module_map(model: nn.Module, module_map: ModuleMap | nn.Module | None = None) -> dict[str, nn.Module]:
    """The name -> layer map of ``model``.

    ``module_map`` may be a mapping (used as is) or a module whose dotted paths are the names. By
    default a refiners-sd UNet is mapped with diffusers names (``refiners_sd.diffusers_module_map``),
    any other model by its own dotted paths.
    """
    if isinstance(module_map, nn.Module):
        return chain_module_map(module_map)
    if module_map is not None:
        return dict(module_map)
    sd_map = _sd_function(model, "diffusers_module_map")
    if sd_map is not None:
        return dict(sd_map(model))
    return chain_module_map(model)


def resolve_aliases(model: nn.Module, module_map: Mapping[str, nn.Module]) -> dict[str, str]:
    """Other names of the mapped modules: for a refiners-sd UNet, its LDM names (``input_blocks.4.1...``).

    Computed by refiners-sd (``refiners_sd.ldm_module_map``) and matched to ``module_map`` by layer identity.
    """
    ldm_map = _sd_function(model, "ldm_module_map")
    if ldm_map is None:
        return {}
    by_layer = {id(layer): name for name, layer in module_map.items()}
    return {ldm: by_layer[id(layer)] for ldm, layer in ldm_map(model).items() if id(layer) in by_layer}


class NameResolver:
    """Resolves names written in LoRA files to module names of a map.

    Dotted names must match exactly. kohya names (``.`` written ``_``) are looked up in a table
    built from the known names and their ``aliases`` (for UNets, LDM names as kohya SDXL files use
    them); a name two modules would share is reported rather than guessed.
    """

    def __init__(self, names: list[str], aliases: Mapping[str, str] | None = None) -> None:
        self.names = set(names)
        self._underscored: dict[str, str] = {}
        self._ambiguous: set[str] = set()
        pairs = [(name, name) for name in names] + list((aliases or {}).items())
        for alias, name in pairs:
            key = alias.replace(".", "_")
            previous = self._underscored.setdefault(key, name)
            if previous != name:
                self._ambiguous.add(key)

    def resolve(self, name: str, underscored: bool) -> str | None:
        """The module name ``name`` refers to, or ``None`` if it matches nothing."""
        if not underscored:
            return name if name in self.names else None
        if name in self._ambiguous:
            raise LoraError(f"kohya name {name!r} matches several modules of the model")
        return self._underscored.get(name)
