"""The ``lora`` family loader called by ``refiners_registry.load_adapter`` and catalog entries."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from refiners_lora.manager import LoraManager


def _default_name(weights: str | Path | Mapping[str, torch.Tensor], manager: LoraManager) -> str:
    base = Path(weights).stem.replace(".", "_") if isinstance(weights, str | Path) else "lora"
    name, counter = base or "lora", 1
    while name in manager.names:
        counter += 1
        name = f"{base}_{counter}"
    return name


def load_lora(
    model: nn.Module,
    weights: str | Path | Mapping[str, torch.Tensor],
    *,
    name: str | None = None,
    scale: float = 1.0,
    module_map: Any = None,
    components: Mapping[str, Any] | None = None,
    **options: Any,
) -> LoraManager:
    """Add the LoRA ``weights`` to ``model`` and return the model's :class:`LoraManager`.

    Successive calls on the same model share one manager, so LoRAs stack. ``name`` defaults to the
    file's stem; other ``options`` (``skip_components``, ``format``, ``allow_pickle``...) go to
    :meth:`LoraManager.add`.
    """
    manager = LoraManager.of(model, module_map=module_map, components=components)
    manager.add(name or _default_name(weights, manager), weights, scale=scale, **options)
    return manager
