"""The ``lora`` family loader called by ``refiners_core.load_adapter`` (catalog names, local files)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from refiners_lora.manager import _MANAGER_ATTRIBUTE, LoraManager
from refiners_lora.pipeline_targets import PipelineLoraManager, is_pipeline

__all__ = ["LoraHandle", "load_lora"]


class LoraHandle:
    """One LoRA loaded by :func:`load_lora` (follows :class:`refiners_core.LoadedAdapter`).

    Attributes:
        manager: the model's :class:`LoraManager` (shared by every LoRA on the model: fuse, save...).
        name: this LoRA's name in the manager.
    """

    def __init__(self, manager: LoraManager, name: str) -> None:
        self.manager = manager
        self.name = name

    @property
    def scale(self) -> float:
        """This LoRA's scale."""
        return self.manager.scales[self.name]

    @scale.setter
    def scale(self, value: float) -> None:
        self.manager.set_scale(self.name, value)

    def remove(self) -> None:
        """Remove this LoRA (the other LoRAs stay); a layer left with none gets its original back."""
        self.manager.remove(self.name)

    def __repr__(self) -> str:
        return f"LoraHandle({self.name!r}, scale={self.scale:g})"


def _default_name(weights: str | Path | Mapping[str, torch.Tensor], manager: LoraManager) -> str:
    base = Path(weights).stem.replace(".", "_") if isinstance(weights, str | Path) else "lora"
    name, counter = base or "lora", 1
    while name in manager.names:
        counter += 1
        name = f"{base}_{counter}"
    return name


def _pipeline_manager(pipeline: Any) -> LoraManager:
    unet = pipeline.components()["unet"]
    existing = unet.__dict__.get(_MANAGER_ATTRIBUTE)
    if existing is not None and (isinstance(existing, PipelineLoraManager) or existing.names):
        return existing  # type: ignore[no-any-return]
    return PipelineLoraManager(pipeline)


def load_lora(
    model: nn.Module | Any,
    weights: str | Path | Mapping[str, torch.Tensor],
    *,
    name: str | None = None,
    scale: float = 1.0,
    module_map: Any = None,
    components: Mapping[str, Any] | None = None,
    **options: Any,
) -> LoraHandle:
    """Add the LoRA ``weights`` to ``model`` and return its :class:`LoraHandle` (``scale``, ``remove()``).

    ``model`` is a pipeline (:class:`refiners_core.Pipeline`): every part of the file applies (UNet and text
    encoders), matched through the pipeline's ``module_names``; or a single model (a UNet), with ``module_map``
    and ``components`` as :class:`LoraManager` takes them. Successive calls on the same model share one
    manager, so LoRAs stack. ``name`` defaults to the file's stem; other ``options`` (``skip_components``,
    ``format``, ``allow_pickle``...) go to :meth:`LoraManager.add`.
    """
    if is_pipeline(model):
        manager = _pipeline_manager(model)
    else:
        manager = LoraManager.of(model, module_map=module_map, components=components)
    chosen = name or _default_name(weights, manager)
    manager.add(chosen, weights, scale=scale, **options)
    return LoraHandle(manager, chosen)
