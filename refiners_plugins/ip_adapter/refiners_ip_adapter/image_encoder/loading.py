"""Load transformers ``CLIPVisionModelWithProjection`` checkpoints into :class:`CLIPImageEncoder` by name."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from refiners_sd.clip.transformer import clip_transformer_map
from torch import nn

from refiners_core import WeightsError, find_weight_files, load_weight_files, resolve_config
from refiners_core.module_map import load_by_module_map
from refiners_ip_adapter.image_encoder import config as known
from refiners_ip_adapter.image_encoder.config import CLIPImageConfig
from refiners_ip_adapter.image_encoder.model import (
    ClassToken,
    ClassTokenProjection,
    CLIPImageEncoder,
    PatchEmbedding,
    VisualProjection,
    ViTEmbedding,
    ViTPositionalEmbedding,
)

__all__ = ["image_encoder_module_map", "load_image_encoder"]

E = TypeVar("E", bound=CLIPImageEncoder)

IGNORED_KEYS = ("vision_model.embeddings.position_ids",)
PREFIX = "vision_model"


def image_encoder_module_map(encoder: CLIPImageEncoder) -> dict[str, nn.Module]:
    """transformers module names -> our leaves (``vision_model.embeddings`` holds ``class_embedding``)."""
    embedding = encoder.ensure_find(ViTEmbedding)
    pooling = encoder.ensure_find(ClassTokenProjection)
    mapping: dict[str, nn.Module] = {
        f"{PREFIX}.embeddings": embedding.ensure_find(ClassToken),
        f"{PREFIX}.embeddings.patch_embedding": embedding.ensure_find(PatchEmbedding).layer("Conv2d"),
        f"{PREFIX}.embeddings.position_embedding": embedding.ensure_find(ViTPositionalEmbedding),
        f"{PREFIX}.pre_layrnorm": encoder.layer("LayerNorm"),
        f"{PREFIX}.post_layernorm": pooling.layer("LayerNorm"),
        "visual_projection": pooling.ensure_find(VisualProjection),
    }
    mapping.update(clip_transformer_map(f"{PREFIX}.encoder.layers", encoder.transformer))
    return mapping


def _weights_and_config(path: Path, config: Any) -> tuple[list[Path], Any]:
    if path.is_dir():
        files = find_weight_files(path, "model", what="CLIP image encoder weights")
        return files, config if config is not None else path / "config.json"
    if path.is_file():
        return [path], config if config is not None else path.parent / "config.json"
    raise WeightsError(f"image encoder not found: {path}")


def _read_config(config: Any, state_dict: Mapping[str, torch.Tensor], explicit: bool) -> CLIPImageConfig:
    config_path = Path(config) if isinstance(config, str | Path) else None
    if config_path is None or config_path.is_file():
        return resolve_config(config, CLIPImageConfig, what="CLIP vision config")
    if not explicit:  # weights alone (e.g. a catalog file): recognise a known size, never guess heads/activation
        recognised = known.known_config_for({key: tuple(value.shape) for key, value in state_dict.items()}, PREFIX)
        if recognised is not None:
            return recognised
    raise WeightsError(
        f"no config.json at {config_path}, and the weights match no known CLIP vision size: "
        "pass config= (a CLIPImageConfig, mapping or path)"
    )


def _infer_sizes(config: CLIPImageConfig, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Check the config against the tensor shapes, so that a wrong config.json fails with a clear message."""
    checks = {
        f"{PREFIX}.embeddings.class_embedding": (config.hidden_size,),
        f"{PREFIX}.embeddings.position_embedding.weight": (config.num_positions, config.hidden_size),
        "visual_projection.weight": (config.projection_dim, config.hidden_size),
    }
    for key, shape in checks.items():
        tensor = state_dict.get(key)
        if tensor is not None and tuple(tensor.shape) != shape:
            raise WeightsError(
                f"{source}: {key} has shape {tuple(tensor.shape)} but the config asks for {shape} "
                "(wrong config.json for these weights?)"
            )


def load_image_encoder(
    cls: type[E],
    path: str | Path,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    config: Any = None,
) -> E:
    """Build ``cls`` from the config and load the weights of ``path`` by name (see ``from_transformers``)."""
    files, config_source = _weights_and_config(Path(path), config)
    weights_path = files[0] if len(files) == 1 else Path(path)
    state_dict = load_weight_files(files, device=device, dtype=dtype)
    parsed = _read_config(config_source, state_dict, explicit=config is not None)
    _infer_sizes(parsed, state_dict, str(weights_path))
    reference = state_dict.get(f"{PREFIX}.embeddings.class_embedding")
    build_dtype = dtype or (reference.dtype if reference is not None else None)
    encoder = cls(parsed, device="meta", dtype=build_dtype)
    encoder.to_empty(device=device or "cpu")
    load_by_module_map(
        encoder, image_encoder_module_map(encoder), state_dict, source=str(weights_path), ignore=IGNORED_KEYS
    )
    return encoder.eval()
