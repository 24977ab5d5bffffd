"""The ``controlnet`` family loader called by ``refiners_core.load_adapter`` (catalog names, local files)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from refiners_controlnet.model import ControlNet
from refiners_core import AdapterError, Chain, component_of
from refiners_core.contracts import ImageInput


def _default_name(weights: str | Path | Mapping[str, torch.Tensor], model: Any) -> str:
    if isinstance(weights, str | Path):
        path = Path(weights)
        stem = path.name if path.is_dir() else path.stem.removesuffix(".fp16")
        base = stem.replace(".", "_") or "controlnet"
        if base in ("diffusion_pytorch_model", "model") and path.parent.name:
            base = path.parent.name.replace(".", "_")
    else:
        base = "controlnet"
    taken = {layer.name for layer in model.layers(ControlNet, recurse=True)} if isinstance(model, Chain) else set()
    name, counter = base, 1
    while name in taken:
        counter += 1
        name = f"{base}_{counter}"
    return name


def load_controlnet(
    model: Any,
    weights: str | Path | Mapping[str, torch.Tensor],
    *,
    name: str | None = None,
    scale: float = 1.0,
    condition: ImageInput | None = None,
    guess_mode: bool = False,
    **options: Any,
) -> ControlNet:
    """Load the ControlNet ``weights`` for ``model`` (a pipeline, whose ``unet`` is used, or a UNet), inject it
    and return it (a :class:`refiners_core.ImageAdapter`: ``scale``, ``set_image``, ``remove``).

    ``name`` defaults to the file (or folder) name, made unique among the ControlNets already in the
    UNet; ``condition`` is passed to :meth:`ControlNet.set_condition`. Other ``options`` (``config``,
    ``variant``, ``device``, ``dtype``, ``allow_pickle``) go to :meth:`ControlNet.from_diffusers`.
    On any error the UNet is left as it was.
    """
    from refiners_sd import UNet

    model = component_of(model, "unet")
    if not isinstance(model, UNet):
        raise AdapterError(f"the controlnet family patches a refiners_sd UNet, got {type(model).__name__}")
    controlnet = ControlNet.from_diffusers(
        model, weights, name=name or _default_name(weights, model), scale=scale, guess_mode=guess_mode, **options
    )
    if condition is not None:
        controlnet.set_condition(condition)
    return controlnet.inject()
