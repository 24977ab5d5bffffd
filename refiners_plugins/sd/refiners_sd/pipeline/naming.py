"""Module names of each pipeline component in the naming conventions adapters use (the base-model contract's
``module_names``): refiners paths, diffusers and LDM names for the UNet, transformers names for the text encoders.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import nn

from refiners_core import RefinersError
from refiners_core.contracts import (
    CONVENTION_DIFFUSERS,
    CONVENTION_LDM,
    CONVENTION_REFINERS,
    CONVENTION_TRANSFORMERS,
)
from refiners_sd.clip.loading import text_encoder_module_map
from refiners_sd.clip.text_encoder import CLIPTextEncoder
from refiners_sd.unet.mapping import diffusers_module_map, ldm_module_map
from refiners_sd.unet.model import UNet

__all__ = ["component_conventions", "component_module_names", "refiners_module_names", "transformers_module_names"]

Naming = Callable[[nn.Module], Mapping[str, nn.Module]]


def refiners_module_names(module: nn.Module) -> dict[str, nn.Module]:
    """Every submodule by its dotted path in the Chain tree (what ``Chain.layer(path)`` accepts)."""
    return {name: layer for name, layer in module.named_modules() if name}


def transformers_module_names(encoder: nn.Module) -> dict[str, nn.Module]:
    """A CLIP text encoder's layers under transformers' ``CLIPTextModel(WithProjection)`` names."""
    assert isinstance(encoder, CLIPTextEncoder)
    mapping = text_encoder_module_map(encoder)
    return {(key if key == "text_projection" else f"text_model.{key}"): layer for key, layer in mapping.items()}


def _unet_diffusers(unet: nn.Module) -> dict[str, nn.Module]:
    assert isinstance(unet, UNet)
    return diffusers_module_map(unet)


def _unet_ldm(unet: nn.Module) -> dict[str, nn.Module]:
    assert isinstance(unet, UNet)
    return ldm_module_map(unet)


_NAMINGS: dict[str, dict[str, Naming]] = {
    "unet": {
        CONVENTION_REFINERS: refiners_module_names,
        CONVENTION_DIFFUSERS: _unet_diffusers,
        CONVENTION_LDM: _unet_ldm,
    },
    "text_encoder": {CONVENTION_REFINERS: refiners_module_names, CONVENTION_TRANSFORMERS: transformers_module_names},
    "text_encoder_2": {CONVENTION_REFINERS: refiners_module_names, CONVENTION_TRANSFORMERS: transformers_module_names},
    "vae": {CONVENTION_REFINERS: refiners_module_names},
}


def component_conventions(component: str) -> tuple[str, ...]:
    """The conventions known for a Stable Diffusion component (empty for an unknown component)."""
    return tuple(_NAMINGS.get(component, {}))


def component_module_names(
    components: Mapping[str, nn.Module], component: str, convention: str
) -> dict[str, nn.Module]:
    """``{name in convention: layer}`` of ``components[component]``.

    Raises:
        RefinersError: no such component, or a convention it does not know (the message lists both).
    """
    if component not in components:
        raise RefinersError(f"no component {component!r} in this pipeline (it has: {', '.join(components)})")
    namings = _NAMINGS.get(component, {CONVENTION_REFINERS: refiners_module_names})
    if convention not in namings:
        raise RefinersError(f"the {component} component has no {convention!r} names (known: {', '.join(namings)})")
    return dict(namings[convention](components[component]))
