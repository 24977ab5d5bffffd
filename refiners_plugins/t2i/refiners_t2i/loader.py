"""The ``t2i`` family loader called by ``refiners_core.load_adapter`` (catalog names, local files)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from refiners_core.contracts import ImageInput, component_of
from refiners_core.errors import AdapterError
from refiners_t2i.adapter import T2IAdapter
from refiners_t2i.injection import injected_names


def _default_name(weights: str | Path | Mapping[str, torch.Tensor], taken: list[str]) -> str:
    if isinstance(weights, str | Path):
        path = Path(weights)
        # diffusers folders and their weight files are named alike: use the folder's name for both
        base = path.parent.name if path.is_file() and path.name.startswith("diffusion_pytorch_model") else path.stem
    else:
        base = "t2i"
    base = base or "t2i"
    name, counter = base, 1
    while name in taken:
        counter += 1
        name = f"{base}_{counter}"
    return name


def load_t2i_adapter(
    model: Any,
    weights: str | Path | Mapping[str, torch.Tensor],
    *,
    name: str | None = None,
    scale: float = 1.0,
    condition: ImageInput | None = None,
    **options: Any,
) -> T2IAdapter:
    """Load the T2I-Adapter ``weights`` for ``model`` (a pipeline, whose ``unet`` is used, or a refiners-sd UNet),
    inject it and return it (a :class:`refiners_core.ImageAdapter`: ``scale``, ``set_image``, ``remove``).

    ``name`` defaults to the file's (or folder's) name, made unique among the T2I-Adapters already in the
    UNet. ``condition``, if given, is passed to :meth:`T2IAdapter.set_condition`. Other ``options``
    (``adapter_type``, ``num_res_blocks``, ``allow_pickle``, ``variant``) go to :meth:`T2IAdapter.from_diffusers`.
    """
    from refiners_sd.unet.model import UNet

    model = component_of(model, "unet")
    if not isinstance(model, UNet):
        raise AdapterError(f"the t2i family patches a refiners-sd UNet, got {type(model).__name__}")
    adapter = T2IAdapter.from_diffusers(
        model, weights, name=name or _default_name(weights, injected_names(model)), scale=scale, **options
    )
    if condition is not None:
        adapter.set_condition(condition)
    return adapter.inject()
