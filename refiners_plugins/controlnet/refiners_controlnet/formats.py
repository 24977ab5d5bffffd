"""ControlNet weight files: diffusers folders and files, and the original ``control_model.*`` layout.

Both are read into one diffusers-named state dict (``controlnet_cond_embedding.*``,
``controlnet_down_blocks.N``, ``controlnet_mid_block``, and the UNet encoder names), with the
architecture from ``config.json`` when there is one, else inferred from tensor shapes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from refiners_sd import UNetConfig, ldm_to_diffusers_name
from refiners_sd.unet.loading import WEIGHTS_NAME

from refiners_controlnet.config import ControlNetConfig, infer_config
from refiners_core import WeightsError
from refiners_core.config import read_config, resolve_config
from refiners_core.model_folder import find_weight_files
from refiners_core.weights import cast_state_dict, load_weight_files

__all__ = ["ORIGINAL_PREFIX", "detect_format", "original_to_diffusers", "read_controlnet_weights"]

ORIGINAL_PREFIX = "control_model."
_DIFFUSERS_MARKERS = ("controlnet_cond_embedding.", "controlnet_down_blocks.", "controlnet_mid_block.")
_ORIGINAL_MARKERS = ("input_hint_block.", "zero_convs.", "middle_block_out.")
_HINT = re.compile(r"^input_hint_block\.(\d+)\.(weight|bias)$")
_ZERO = re.compile(r"^zero_convs\.(\d+)\.0\.(weight|bias)$")

Weights = str | Path | Mapping[str, torch.Tensor]


def _first_keys(keys: list[str], limit: int = 5) -> str:
    return ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "")


def detect_format(state_dict: Mapping[str, torch.Tensor], source: str = "state dict") -> str:
    """``"diffusers"`` (``controlnet_cond_embedding.*``...) or ``"lllyasviel"`` (``control_model.*``, or the same
    names without the prefix). Raises :class:`WeightsError` for anything else."""
    keys = list(state_dict)
    if any(key.startswith(ORIGINAL_PREFIX) for key in keys):
        return "lllyasviel"
    if any(key.startswith(_DIFFUSERS_MARKERS) for key in keys):
        return "diffusers"
    if any(key.startswith(_ORIGINAL_MARKERS) for key in keys):
        return "lllyasviel"
    raise WeightsError(
        f"{source} is not a ControlNet: expected diffusers keys (controlnet_cond_embedding.*, "
        f"controlnet_down_blocks.*) or the original layout (control_model.*); found {_first_keys(sorted(keys))}"
    )


def original_to_diffusers(
    state_dict: Mapping[str, torch.Tensor], unet: Any, source: str = "state dict"
) -> dict[str, torch.Tensor]:
    """Rename an original-layout ControlNet state dict to diffusers names.

    Keys under ``control_model.`` are kept (other keys of a full checkpoint are ignored); the encoder's
    LDM names (``time_embed``, ``label_emb``, ``input_blocks``, ``middle_block``) are translated with
    :func:`refiners_sd.ldm_to_diffusers_name` for the block numbering of ``unet`` (a UNet or its config);
    ``input_hint_block.{0,2,...,last}`` become ``controlnet_cond_embedding.conv_in``, ``.blocks.N`` and
    ``.conv_out``; ``zero_convs.N.0`` becomes ``controlnet_down_blocks.N``; ``middle_block_out.0`` becomes
    ``controlnet_mid_block``. Keys that fit none of these raise :class:`WeightsError` naming them.
    """
    if any(key.startswith(ORIGINAL_PREFIX) for key in state_dict):
        items = {
            key[len(ORIGINAL_PREFIX) :]: value for key, value in state_dict.items() if key.startswith(ORIGINAL_PREFIX)
        }
    else:
        items = dict(state_dict)
    hint = sorted({int(match.group(1)) for key in items if (match := _HINT.match(key))})
    hint_names = {index: f"blocks.{position - 1}" for position, index in enumerate(hint)}
    if hint:
        hint_names[hint[0]], hint_names[hint[-1]] = "conv_in", "conv_out"
    renamed: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in items.items():
        if match := _HINT.match(key):
            name = f"controlnet_cond_embedding.{hint_names[int(match.group(1))]}.{match.group(2)}"
        elif match := _ZERO.match(key):
            name = f"controlnet_down_blocks.{match.group(1)}.{match.group(2)}"
        elif key.startswith("middle_block_out.0."):
            name = "controlnet_mid_block." + key.removeprefix("middle_block_out.0.")
        else:
            try:
                name = ldm_to_diffusers_name(key, unet)
            except KeyError:
                unknown.append(key)
                continue
        renamed[name] = value
    if unknown:
        raise WeightsError(
            f"{source}: {len(unknown)} keys of the original ControlNet layout do not fit this UNet's encoder: "
            + _first_keys(sorted(unknown), 20)
        )
    return renamed


def _config_beside(path: Path) -> dict[str, Any] | None:
    candidate = path / "config.json" if path.is_dir() else path.parent / "config.json"
    if not candidate.is_file():
        return None
    config = read_config(candidate, "ControlNet config")
    if path.is_dir() or config.get("_class_name") == "ControlNetModel":
        return config
    return None


def read_controlnet_weights(
    weights: Weights,
    unet: UNetConfig,
    *,
    config: str | Path | Mapping[str, Any] | ControlNetConfig | None = None,
    variant: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    allow_pickle: bool = False,
) -> tuple[dict[str, torch.Tensor], ControlNetConfig, str]:
    """Read ControlNet ``weights`` as a diffusers-named state dict, with its config and a description of its source.

    ``weights``: a diffusers ControlNet folder (``config.json`` + ``diffusion_pytorch_model[.fp16].safetensors``,
    ``variant=`` picks one), a single safetensors file (diffusers keys or the original layout), or a
    state dict. ``config``: a mapping, a ``config.json`` path or a :class:`ControlNetConfig`; by default
    the folder's ``config.json`` (or a ControlNet ``config.json`` beside a file), else inferred from
    shapes and ``unet`` (see :func:`~refiners_controlnet.config.infer_config`). Tensors are read
    straight onto ``device`` and cast to ``dtype``.
    """
    found_config: dict[str, Any] | None = None
    if isinstance(weights, Mapping):
        source = "ControlNet state dict"
        state = cast_state_dict(weights, device, dtype)
    else:
        path = Path(weights)
        source = str(path)
        if not path.exists():
            raise WeightsError(f"ControlNet weights not found: {path}")
        files = (
            find_weight_files(path, WEIGHTS_NAME, variant=variant, allow_pickle=allow_pickle, what="ControlNet weights")
            if path.is_dir()
            else [path]
        )
        state = load_weight_files(files, device=device, dtype=dtype, allow_pickle=allow_pickle)
        if config is None:
            found_config = _config_beside(path)
    layout = detect_format(state, source)
    if layout == "lllyasviel":
        state = original_to_diffusers(state, unet, source)
        found_config = None  # a diffusers config.json does not describe an original-layout file
    found = found_config
    resolved = resolve_config(
        config,
        ControlNetConfig,
        default=lambda: ControlNetConfig.from_dict(found if found is not None else infer_config(state, unet, source)),
        what="ControlNet config",
    )
    return state, resolved, source
