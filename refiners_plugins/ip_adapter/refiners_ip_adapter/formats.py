"""The h94 IP-Adapter layout: read a file, detect the variant from its keys, map its names to our layers.

An h94 file (``ip-adapter_sd15.safetensors``, ``ip-adapter-plus_sdxl_vit-h.safetensors``...) is flat:

- ``image_proj.*``: the image projection. ``proj`` + ``norm`` is the base IP-Adapter (``T`` tokens from
  CLIP ``image_embeds``); ``latents`` + ``proj_in`` + ``layers.{i}.{0,1}.*`` + ``proj_out`` + ``norm_out``
  is the Plus Resampler (reads the penultimate hidden states); ``proj.0/2/3`` is Full Face.
- ``ip_adapter.{k}.to_k_ip.weight`` / ``to_v_ip.weight``: the image key/value projections of the
  ``(k - 1) / 2``-th cross-attention, counted in diffusers' ``attn_processors`` order (down blocks,
  up blocks, mid block): odd numbers, because the self-attentions take the even ones.

The pickled ``.bin`` files hold the same tensors as nested dicts ``{"image_proj": {...}, "ip_adapter": {...}}``;
a state dict in that nested form is accepted too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from refiners_core import WeightsError, find_weight_files, load_tensors
from refiners_core.weights import format_keys
from refiners_ip_adapter.projection import (
    FullImageProjection,
    ImageProjection,
    LatentQueries,
    PerceiverAttention,
    PerceiverFeedForward,
    PerceiverResampler,
)

__all__ = [
    "IPAdapterWeights",
    "Variant",
    "build_projection",
    "flatten_nested",
    "parse_h94",
    "projection_module_map",
    "read_h94",
]

Variant = Literal["base", "plus", "full"]
IMAGE_PROJ = "image_proj."
IP_ADAPTER = "ip_adapter."
_ATTENTION_KEY = re.compile(r"^ip_adapter\.(\d+)\.(to_k_ip|to_v_ip)\.weight$")
_LAYER_KEY = re.compile(r"^image_proj\.layers\.(\d+)\.")


@dataclass
class IPAdapterWeights:
    """A parsed h94 state dict.

    Attributes:
        variant: ``"base"``, ``"plus"`` or ``"full"``.
        image_proj: the ``image_proj.*`` tensors (keys keep their prefix).
        attention: ``{k: (to_k_ip, to_v_ip)}`` weights by h94 number ``k`` (1, 3, 5...).
        num_tokens: image tokens the projection produces per image.
        image_embed_dim: width of the image features it reads (CLIP ``image_embeds`` or hidden states).
        cross_attention_dim: width of the tokens it produces (the UNet's text width).
        hidden_dim, depth, num_heads: Resampler sizes (Plus only).
    """

    variant: Variant
    image_proj: dict[str, torch.Tensor]
    attention: dict[int, tuple[torch.Tensor, torch.Tensor]]
    num_tokens: int
    image_embed_dim: int
    cross_attention_dim: int
    hidden_dim: int = 0
    depth: int = 0
    num_heads: int = 0
    source: str = field(default="state dict")

    @property
    def reads_hidden_states(self) -> bool:
        """Whether the projection reads penultimate hidden states ``[B, N, H]`` (Plus, Full) rather than
        ``image_embeds`` ``[B, D]`` (base)."""
        return self.variant != "base"


def flatten_nested(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``{"image_proj": {...}, "ip_adapter": {...}}`` -> flat ``image_proj.*`` / ``ip_adapter.*`` keys."""
    flat: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if isinstance(value, Mapping):
            for inner, tensor in value.items():
                flat[f"{key}.{inner}"] = tensor
        else:
            flat[key] = value
    return flat


def read_h94(
    path: str | Path,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    allow_pickle: bool = False,
) -> dict[str, torch.Tensor]:
    """Read an h94 file (or the one safetensors file of a folder) straight onto ``device`` as ``dtype``.
    Pickled files need ``allow_pickle=True``."""
    path = Path(path)
    if path.is_dir():
        path = find_weight_files(path, (), any_single_file=True, what="IP-Adapter file")[0]
    state_dict = load_tensors(path, device=device, dtype=dtype, allow_pickle=allow_pickle)
    if not state_dict:
        raise WeightsError(
            f"{path} holds no tensor at its top level (a pickled h94 .bin file nests them in dicts): "
            "use the .safetensors release of this IP-Adapter"
        )
    return state_dict


def _require(state: Mapping[str, torch.Tensor], key: str, source: str, variant: str) -> torch.Tensor:
    if key not in state:
        raise WeightsError(f"{source}: {variant} IP-Adapter image projection without {key}")
    return state[key]


def _detect(image_proj: Mapping[str, torch.Tensor], source: str) -> IPAdapterWeights:
    if "image_proj.latents" in image_proj:
        latents = image_proj["image_proj.latents"]
        proj_in = _require(image_proj, "image_proj.proj_in.weight", source, "Plus")
        proj_out = _require(image_proj, "image_proj.proj_out.weight", source, "Plus")
        to_q = _require(image_proj, "image_proj.layers.0.0.to_q.weight", source, "Plus")
        depth = 1 + max(int(match.group(1)) for key in image_proj if (match := _LAYER_KEY.match(key)))
        if latents.dim() != 3 or to_q.shape[0] % 64:
            raise WeightsError(f"{source}: unexpected Plus shapes (latents {tuple(latents.shape)})")
        return IPAdapterWeights(
            variant="plus",
            image_proj=dict(image_proj),
            attention={},
            num_tokens=latents.shape[1],
            image_embed_dim=proj_in.shape[1],
            cross_attention_dim=proj_out.shape[0],
            hidden_dim=latents.shape[2],
            depth=depth,
            num_heads=to_q.shape[0] // 64,
        )
    if "image_proj.proj.3.weight" in image_proj:
        first = _require(image_proj, "image_proj.proj.0.weight", source, "Full")
        return IPAdapterWeights(
            variant="full",
            image_proj=dict(image_proj),
            attention={},
            num_tokens=257,
            image_embed_dim=first.shape[1],
            cross_attention_dim=image_proj["image_proj.proj.3.weight"].shape[0],
        )
    if "image_proj.proj.weight" in image_proj and "image_proj.norm.weight" in image_proj:
        proj, norm = image_proj["image_proj.proj.weight"], image_proj["image_proj.norm.weight"]
        if proj.shape[0] % norm.shape[0]:
            raise WeightsError(
                f"{source}: image_proj.proj.weight {tuple(proj.shape)} is not a whole number of "
                f"{norm.shape[0]}-wide tokens"
            )
        return IPAdapterWeights(
            variant="base",
            image_proj=dict(image_proj),
            attention={},
            num_tokens=proj.shape[0] // norm.shape[0],
            image_embed_dim=proj.shape[1],
            cross_attention_dim=norm.shape[0],
        )
    if any("perceiver_resampler" in key for key in image_proj) or "image_proj.proj.0.weight" in image_proj:
        raise WeightsError(f"{source}: IP-Adapter FaceID files are not supported (they need face embeddings)")
    raise WeightsError(
        f"{source}: unknown IP-Adapter image projection (keys: {format_keys(sorted(image_proj))}); expected the "
        "base (proj, norm), Plus (latents, proj_in, layers, proj_out, norm_out) or Full (proj.0/2/3) layout"
    )


def parse_h94(state_dict: Mapping[str, Any], source: str = "state dict") -> IPAdapterWeights:
    """Split an h94 state dict (flat or nested) into image projection and attention weights; detect the variant.

    Raises:
        WeightsError: naming the keys at fault (unknown keys, a ``to_k_ip`` without its ``to_v_ip``, a
            FaceID or unknown projection layout).
    """
    flat = flatten_nested(state_dict)
    image_proj = {key: value for key, value in flat.items() if key.startswith(IMAGE_PROJ)}
    pairs: dict[int, dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    for key, value in flat.items():
        if key.startswith(IMAGE_PROJ):
            continue
        match = _ATTENTION_KEY.match(key)
        if match is None or not isinstance(value, torch.Tensor):
            unknown.append(key)
            continue
        pairs.setdefault(int(match.group(1)), {})[match.group(2)] = value
    problems = []
    if unknown:
        lora = [key for key in unknown if "lora" in key]
        hint = " (FaceID LoRA keys are not supported)" if lora else ""
        problems.append(f"keys of no IP-Adapter layout{hint}: {format_keys(sorted(unknown))}")
    incomplete = [
        f"ip_adapter.{k}.{'to_v_ip' if 'to_k_ip' in pair else 'to_k_ip'}.weight"
        for k, pair in sorted(pairs.items())
        if len(pair) != 2
    ]
    if incomplete:
        problems.append(f"missing keys: {format_keys(incomplete)}")
    if not image_proj:
        problems.append("no image_proj.* keys")
    if not pairs:
        problems.append("no ip_adapter.{k}.to_k_ip/to_v_ip keys")
    if problems:
        raise WeightsError(f"{source} is not a usable h94 IP-Adapter file: " + "; ".join(problems))
    weights = _detect(image_proj, source)
    weights.attention = {k: (pair["to_k_ip"], pair["to_v_ip"]) for k, pair in sorted(pairs.items())}
    weights.source = source
    return weights


def build_projection(
    weights: IPAdapterWeights, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> ImageProjection | PerceiverResampler | FullImageProjection:
    """An empty image projection sized for ``weights`` (on ``device``, ``"meta"`` to fill it by assignment)."""
    if weights.variant == "plus":
        return PerceiverResampler(
            weights.image_embed_dim,
            weights.cross_attention_dim,
            num_tokens=weights.num_tokens,
            hidden_dim=weights.hidden_dim,
            depth=weights.depth,
            num_heads=weights.num_heads,
            device=device,
            dtype=dtype,
        )
    if weights.variant == "full":
        return FullImageProjection(
            weights.image_embed_dim, weights.cross_attention_dim, weights.num_tokens, device=device, dtype=dtype
        )
    return ImageProjection(
        weights.image_embed_dim, weights.cross_attention_dim, weights.num_tokens, device=device, dtype=dtype
    )


def projection_module_map(projection: nn.Module) -> dict[str, nn.Module]:
    """h94 module names (``image_proj.*``) -> our leaves, for each projection class."""
    prefix = IMAGE_PROJ.rstrip(".")
    if isinstance(projection, PerceiverResampler):
        mapping: dict[str, nn.Module] = {
            prefix: projection.ensure_find(LatentQueries),
            f"{prefix}.proj_in": projection.layer("Linear_1"),
            f"{prefix}.proj_out": projection.layer("Linear_2"),
            f"{prefix}.norm_out": projection.layer("LayerNorm"),
        }
        for index, block in enumerate(projection.blocks):
            attention = block.ensure_find(PerceiverAttention)
            feedforward = block.ensure_find(PerceiverFeedForward)
            mapping.update(
                {
                    f"{prefix}.layers.{index}.0.norm1": attention.layer("Parallel.Chain.Concatenate.Chain.LayerNorm"),
                    f"{prefix}.layers.{index}.0.norm2": attention.layer("LayerNorm"),
                    f"{prefix}.layers.{index}.0.to_q": attention.layer("Parallel.Linear"),
                    f"{prefix}.layers.{index}.0.to_kv": attention.layer("Parallel.Chain.Linear"),
                    f"{prefix}.layers.{index}.0.to_out": attention.layer("Linear"),
                    f"{prefix}.layers.{index}.1.0": feedforward.layer("LayerNorm"),
                    f"{prefix}.layers.{index}.1.1": feedforward.layer("Linear_1"),
                    f"{prefix}.layers.{index}.1.3": feedforward.layer("Linear_2"),
                }
            )
        return mapping
    if isinstance(projection, FullImageProjection):
        return {
            f"{prefix}.proj.0": projection.layer("Linear_1"),
            f"{prefix}.proj.2": projection.layer("Linear_2"),
            f"{prefix}.proj.3": projection.layer("LayerNorm"),
        }
    if isinstance(projection, ImageProjection):
        return {f"{prefix}.proj": projection.layer("Linear"), f"{prefix}.norm": projection.layer("LayerNorm")}
    raise TypeError(f"no h94 names for {type(projection).__name__}")
