"""Fresh LoRAs to train: the ``create`` of the ``lora`` family (see :class:`refiners_core.AdapterFamily`).

:func:`create_lora` injects zero-effect LoRAs (``up`` zero, ``down`` Kaiming-uniform as PEFT initialises it)
on the attention projections of a pipeline's UNet (``to_q``, ``to_k``, ``to_v``, ``to_out.0``) and, on
request, of its text encoders (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``), the targets diffusers' LoRA
training examples use, freezes everything else, and returns a :class:`TrainableLora`. The layers are the
usual :class:`~refiners_lora.LoraManager` ones, so a trained LoRA behaves exactly as the same file loaded
later; :meth:`TrainableLora.save` writes kohya or diffusers files with alpha inside (kohya: an ``alpha``
tensor per module; diffusers: ``lora_adapter_metadata``), so every loader scales it the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from refiners_core.contracts import CONVENTION_DIFFUSERS, CONVENTION_TRANSFORMERS
from refiners_core.weights import save_state_dict
from refiners_lora.errors import LoraError
from refiners_lora.formats.common import COMPONENTS
from refiners_lora.layers import Lora
from refiners_lora.loader import LoraHandle
from refiners_lora.manager import LoraManager
from refiners_lora.writers import diffusers_state_dict, kohya_state_dict

__all__ = ["TEXT_ENCODER_TARGETS", "TRAIN_FORMATS", "UNET_TARGETS", "TrainableLora", "create_lora"]

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
"""Name endings of the UNet layers a trained LoRA patches (diffusers names)."""
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
"""Name endings of the text-encoder layers a trained LoRA patches (transformers names)."""
TRAIN_FORMATS = ("kohya", "diffusers")


def _targets(pipeline: Any, component: str) -> dict[str, nn.Module]:
    if component == "unet":
        names, endings = pipeline.module_names("unet", CONVENTION_DIFFUSERS), UNET_TARGETS
    else:
        names, endings = pipeline.module_names(component, CONVENTION_TRANSFORMERS), TEXT_ENCODER_TARGETS
    suffixes = tuple(f".{ending}" for ending in endings)
    found: dict[str, nn.Module] = {
        name: layer for name, layer in names.items() if isinstance(layer, nn.Linear) and name.endswith(suffixes)
    }
    if not found:
        raise LoraError(f"the {component} of this pipeline has no attention projection to train a LoRA on")
    return found


def _initial_weights(layer: nn.Linear, rank: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    down = torch.empty(rank, layer.in_features)
    bound = 1 / math.sqrt(layer.in_features)  # kaiming_uniform_(a=sqrt(5)), as nn.Linear and PEFT initialise
    down.uniform_(-bound, bound, generator=generator)
    return down, torch.zeros(layer.out_features, rank)


class TrainableLora(LoraHandle):
    """A LoRA being trained: its parameters, its strength, saving and removal (a
    :class:`refiners_core.TrainableAdapter`; ``scale`` and ``remove()`` are :class:`LoraHandle`'s).

    Attributes:
        manager: the :class:`~refiners_lora.LoraManager` holding it under :attr:`name`.
        rank, alpha: of every layer.
    """

    def __init__(self, manager: LoraManager, name: str, rank: int, alpha: float) -> None:
        super().__init__(manager, name)
        self.rank = rank
        self.alpha = alpha

    def layers(self) -> dict[tuple[str, str], Lora]:
        """The LoRA layers by ``(component, module name)`` (a trainable LoRA holds plain LoRA layers only)."""
        layers = self.manager.layers_of(self.name)
        return {target: layer for target, layer in layers.items() if isinstance(layer, Lora)}

    def parameters(self) -> Iterator[nn.Parameter]:
        """The ``down`` and ``up`` weights of every layer, in a fixed order."""
        for _, lora in sorted(self.layers().items()):
            yield from lora.parameters()

    def save(self, path: str | Path, *, format: str | None = None, metadata: Mapping[str, str] | None = None) -> Path:
        """Write the LoRA as a ``kohya`` (default) or ``diffusers`` safetensors file, float32, with ``metadata``
        added to the header."""
        format = format or "kohya"
        writers = {"kohya": kohya_state_dict, "diffusers": diffusers_state_dict}
        if format not in writers:
            raise LoraError(f"cannot save a trained LoRA as {format!r}: expected one of {', '.join(TRAIN_FORMATS)}")
        tensors = {
            target: (down.float(), up.float(), alpha)
            for target, (down, up, alpha) in self.manager.state_dict_of(self.name).items()
        }
        state, header = writers[format](tensors)
        return save_state_dict(state, path, metadata={**header, **dict(metadata or {})})


def create_lora(
    pipeline: Any,
    *,
    rank: int = 4,
    alpha: float | None = None,
    components: Sequence[str] = ("unet",),
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    name: str = "trained",
) -> TrainableLora:
    """Inject a fresh LoRA of ``rank`` (``alpha`` defaults to ``rank``) into ``components`` of ``pipeline``.

    Every parameter of the pipeline's components stops requiring gradients; the LoRA's ``down`` and ``up``
    (in ``dtype``, float32 by default, whatever the base model's dtype) require them. ``seed`` fixes ``down``'s
    initial values.

    Raises:
        LoraError: an unknown component, a rank below 1, or a component without attention projections.
    """
    if rank < 1:
        raise LoraError(f"the LoRA rank must be at least 1, got {rank}")
    unknown = [component for component in components if component not in COMPONENTS]
    if unknown or "unet" not in components:
        raise LoraError(f"cannot train LoRAs on {components!r}: expected 'unet' and optionally text encoders")
    for module in pipeline.components().values():
        module.requires_grad_(False)
    maps = {component: _targets(pipeline, component) for component in components}
    generator = torch.Generator().manual_seed(seed)
    alpha = float(rank if alpha is None else alpha)
    state: dict[str, torch.Tensor] = {}
    for component, layers in maps.items():
        for module, layer in sorted(layers.items()):
            down, up = _initial_weights(layer, rank, generator)  # type: ignore[arg-type]
            state[f"{component}.{module}.down.weight"] = down
            state[f"{component}.{module}.up.weight"] = up
            state[f"{component}.{module}.alpha"] = torch.tensor(alpha)
    unet = pipeline.components()["unet"]
    extra = {component: layers for component, layers in maps.items() if component != "unet"}
    manager = LoraManager(unet, module_map=maps["unet"], components=extra)
    manager.add(name, state, format="refiners")
    trainable = TrainableLora(manager, name, rank, alpha)
    for lora in trainable.layers().values():
        lora.to(dtype=dtype)
        lora.requires_grad_(True)
    return trainable
