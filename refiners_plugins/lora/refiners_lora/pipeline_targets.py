"""LoRA targets of a whole pipeline, named by the pipeline itself (the base-model contract's ``module_names``).

A LoRA file names modules of the UNet and the text encoders in the diffusers, LDM (kohya) or transformers
conventions. A pipeline says which conventions it knows for each component; nothing here knows a base model.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from refiners_core.contracts import CONVENTION_DIFFUSERS, CONVENTION_LDM, CONVENTION_REFINERS, CONVENTION_TRANSFORMERS
from refiners_lora.formats.common import COMPONENTS, TRANSFORMERS_WRAPPER
from refiners_lora.manager import LoraManager
from refiners_lora.module_map import NameResolver

__all__ = ["PipelineLoraManager", "component_targets", "is_pipeline"]

PRIMARY_CONVENTIONS = (CONVENTION_DIFFUSERS, CONVENTION_TRANSFORMERS, CONVENTION_REFINERS)
"""The convention LoRA module names are matched in, first known first (dotted names in files use these)."""
ALIAS_CONVENTIONS = (CONVENTION_LDM,)
"""Other conventions whose names (with ``_`` for ``.``, as kohya files write them) resolve to the same layers."""


def is_pipeline(target: Any) -> bool:
    """Whether ``target`` follows the base-model contract (has ``components``, ``conventions``, ``module_names``)."""
    return all(callable(getattr(target, member, None)) for member in ("components", "conventions", "module_names"))


def component_targets(pipeline: Any) -> tuple[dict[str, dict[str, nn.Module]], dict[str, dict[str, str]]]:
    """For each LoRA component the pipeline has: its name -> layer map, and its alias -> name map.

    The map uses the first of :data:`PRIMARY_CONVENTIONS` the component knows (transformers names with and without
    the ``text_model.`` wrapper); aliases come from :data:`ALIAS_CONVENTIONS`, matched to the map by layer identity.
    """
    maps: dict[str, dict[str, nn.Module]] = {}
    aliases: dict[str, dict[str, str]] = {}
    present = pipeline.components()
    for component in COMPONENTS:
        if component not in present:
            continue
        known = pipeline.conventions(component)
        primary = next((convention for convention in PRIMARY_CONVENTIONS if convention in known), None)
        if primary is None:
            continue
        maps[component] = dict(pipeline.module_names(component, primary))
        if primary == CONVENTION_TRANSFORMERS:
            maps[component].update(
                {
                    name.removeprefix(TRANSFORMERS_WRAPPER): layer
                    for name, layer in list(maps[component].items())
                    if name.startswith(TRANSFORMERS_WRAPPER)
                }
            )
        by_layer = {id(layer): name for name, layer in maps[component].items()}
        aliases[component] = {
            alias: by_layer[id(layer)]
            for convention in ALIAS_CONVENTIONS
            if convention in known
            for alias, layer in pipeline.module_names(component, convention).items()
            if id(layer) in by_layer
        }
    return maps, aliases


class PipelineLoraManager(LoraManager):
    """A :class:`LoraManager` on every component of a pipeline, named as the pipeline names them.

    Attached to the pipeline's UNet like any manager (``LoraManager.of(unet)`` finds it), it also targets the text
    encoders, so a LoRA file's ``lora_te_``/``lora_te1_``/``lora_te2_`` and ``text_encoder(_2).`` parts apply.
    """

    def __init__(self, pipeline: Any) -> None:
        maps, self._aliases = component_targets(pipeline)
        if "unet" not in maps:
            raise ValueError("this pipeline has no 'unet' component with names a LoRA can target")
        others = {component: names for component, names in maps.items() if component != "unet"}
        super().__init__(
            pipeline.components()["unet"],
            module_map=maps["unet"],
            components=others,
            architecture=getattr(pipeline, "architecture", None),
        )

    def _resolver(self, component: str) -> NameResolver:
        if component not in self._resolvers:
            self._resolvers[component] = NameResolver(list(self._maps[component]), self._aliases.get(component, {}))
        return self._resolvers[component]
