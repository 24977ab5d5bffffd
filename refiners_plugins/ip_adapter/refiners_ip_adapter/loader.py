"""The ``ip-adapter`` family loader called by ``refiners_core.load_adapter`` (catalog names, local files)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from refiners_core import AdapterError, component_of
from refiners_ip_adapter.adapter import IPAdapter
from refiners_ip_adapter.image_encoder.model import CLIPImageEncoder


def load_ip_adapter(
    model: nn.Module,
    weights: str | Path | Mapping[str, torch.Tensor],
    *,
    scale: float = 1.0,
    name: str = "ip_adapter",
    image_encoder: CLIPImageEncoder | str | Path | None = None,
    allow_pickle: bool = False,
    **options: Any,
) -> IPAdapter:
    """Read the h94 IP-Adapter ``weights`` for ``model`` (a pipeline, whose ``unet`` is used, or a refiners-sd
    UNet), inject it and return it (a :class:`refiners_core.ImageAdapter`: ``scale``, ``set_image``, ``remove``).

    ``image_encoder`` (the family's declared input) may be a :class:`CLIPImageEncoder` or a transformers folder
    to load one from (on the UNet's device and dtype); without it, pass embeddings to ``set_image_embedding``.
    """
    if options:
        raise AdapterError(f"unknown ip-adapter options: {', '.join(sorted(options))}")
    from refiners_sd.unet.model import UNet

    model = component_of(model, "unet")
    if not isinstance(model, UNet):
        raise AdapterError(f"the ip-adapter family patches refiners-sd UNets, not {type(model).__name__}")
    if isinstance(image_encoder, str | Path):
        image_encoder = CLIPImageEncoder.from_transformers(image_encoder, device=model.device, dtype=model.dtype)
    adapter = IPAdapter.from_file(
        model, weights, scale=scale, name=name, image_encoder=image_encoder, allow_pickle=allow_pickle
    )
    return adapter.inject()
