"""Reading T2I-Adapter weights: diffusers folders and files, original TencentARC files, state dicts.

Everything is normalised to diffusers keys (``adapter.conv_in``, ``adapter.body.{i}.in_conv``,
``adapter.body.{i}.resnets.{j}.block1|block2``, ``adapter.body.{i}.out_conv``).

Original TencentARC layouts:

- full adapter (``Adapter``): ``conv_in``, then a flat ``body.{k}`` of resnets (``block1``, ``block2``, and
  ``in_conv`` on the first resnet of a level that changes width); resnet ``k`` is resnet ``k % r`` of
  level ``k // r``, with ``r`` resnets per level;
- light adapter (``Adapter_light``): ``body.{i}.in_conv``, ``body.{i}.body.{j}.block1|block2``, ``body.{i}.out_conv``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from refiners_core.config import read_config
from refiners_core.errors import WeightsError
from refiners_core.model_folder import find_weight_files
from refiners_core.weights import cast_state_dict, format_keys, load_tensors, load_weight_files

__all__ = ["FORMATS", "detect_format", "read_weights", "tencentarc_to_diffusers"]

FORMATS = ("diffusers", "tencentarc")
WEIGHT_STEM = "diffusion_pytorch_model"

_FULL_ORIGINAL = re.compile(r"^body\.(\d+)\.(block1|block2|in_conv)\.(weight|bias)$")
_LIGHT_ORIGINAL = re.compile(r"^body\.(\d+)\.(?:(in_conv|out_conv)|body\.(\d+)\.(block1|block2))\.(weight|bias)$")


def detect_format(keys: list[str], origin: str = "weights") -> str:
    """``"diffusers"`` (every key under ``adapter.``) or ``"tencentarc"`` (``conv_in``/``body.N`` at the root).

    Raises:
        WeightsError: for any other layout, with a sample of its keys.
    """
    if keys and all(key.startswith("adapter.") for key in keys):
        return "diffusers"
    if keys and all(key.startswith(("conv_in.", "body.")) for key in keys):
        return "tencentarc"
    raise WeightsError(
        f"{origin} is not a T2I-Adapter of a known layout (diffusers 'adapter.*' or TencentARC 'conv_in'/'body.N'); "
        f"keys: {format_keys(sorted(keys))}"
    )


def tencentarc_to_diffusers(
    state: Mapping[str, torch.Tensor], levels: int | None = None, num_res_blocks: int | None = None, origin: str = ""
) -> dict[str, torch.Tensor]:
    """Rename an original TencentARC state dict to diffusers keys.

    The light layout names its levels. The full layout numbers resnets flatly: give ``num_res_blocks`` (resnets
    per level) or ``levels`` (one level per feature, i.e. per UNet down block) to split them.

    Raises:
        WeightsError: unknown keys, or a resnet count that does not split into the given levels.
    """
    where = origin or "TencentARC weights"
    if "conv_in.weight" not in state:
        renamed: dict[str, torch.Tensor] = {}
        unknown = []
        for key, value in state.items():
            match = _LIGHT_ORIGINAL.match(key)
            if match is None:
                unknown.append(key)
                continue
            level, conv, resnet, block, kind = match.groups()
            inner = conv if conv else f"resnets.{resnet}.{block}"
            renamed[f"adapter.body.{level}.{inner}.{kind}"] = value
        if unknown:
            raise WeightsError(f"{where}: keys of no TencentARC light-adapter layout: {format_keys(unknown)}")
        return renamed
    matches = {key: _FULL_ORIGINAL.match(key) for key in state if not key.startswith("conv_in.")}
    unknown = [key for key, match in matches.items() if match is None]
    unknown += [key for key in state if key.startswith("conv_in.") and key not in ("conv_in.weight", "conv_in.bias")]
    if unknown:
        raise WeightsError(f"{where}: keys of no TencentARC full-adapter layout: {format_keys(unknown)}")
    count = 1 + max(int(match.group(1)) for match in matches.values() if match is not None)
    if num_res_blocks is None:
        if levels is None or levels <= 0 or count % levels:
            raise WeightsError(
                f"{where}: {count} resnets do not split evenly into {levels} levels; pass num_res_blocks=..."
            )
        num_res_blocks = count // levels
    if num_res_blocks <= 0 or count % num_res_blocks:
        raise WeightsError(f"{where}: {count} resnets do not split into levels of num_res_blocks={num_res_blocks}")
    renamed = {f"adapter.{key}": state[key] for key in ("conv_in.weight", "conv_in.bias") if key in state}
    misplaced = []
    for key, match in matches.items():
        assert match is not None
        flat, part, kind = int(match.group(1)), match.group(2), match.group(3)
        level, resnet = divmod(flat, num_res_blocks)
        if part == "in_conv":
            if resnet != 0:
                misplaced.append(key)
            renamed[f"adapter.body.{level}.in_conv.{kind}"] = state[key]
        else:
            renamed[f"adapter.body.{level}.resnets.{resnet}.{part}.{kind}"] = state[key]
    if misplaced:
        raise WeightsError(
            f"{where}: in_conv on a resnet that does not start a level (num_res_blocks={num_res_blocks}): "
            f"{format_keys(misplaced)}"
        )
    return renamed


def _read_config(path: Path) -> dict[str, Any] | None:
    """A diffusers ``T2IAdapter`` config from ``path``, or ``None`` if absent or another model's config."""
    if not path.is_file():
        return None
    config = read_config(path, "T2I-Adapter config")
    if config.get("_class_name") == "T2IAdapter" or "adapter_type" in config:
        return config
    return None


def read_weights(
    source: str | Path | Mapping[str, torch.Tensor],
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    *,
    allow_pickle: bool = False,
    variant: str | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, str]:
    """``(state dict, diffusers config or None, description of the origin)`` for any supported source.

    ``source`` is a diffusers folder (``config.json`` + ``diffusion_pytorch_model[.variant].safetensors``), a
    single weight file (a ``config.json`` next to it is used if it is a ``T2IAdapter`` config), or a state dict.
    Tensors are read straight onto ``device`` as ``dtype``. Pickled files need ``allow_pickle=True``.
    """
    if isinstance(source, Mapping):
        state = cast_state_dict(source, device, dtype)
        return state, None, "state dict"
    path = Path(source).expanduser()
    if path.is_dir():
        config = _read_config(path / "config.json")
        files = find_weight_files(
            path,
            WEIGHT_STEM,
            variant=variant,
            allow_pickle=allow_pickle,
            any_single_file=True,
            what="T2I-Adapter weight file",
        )
        state = load_weight_files(files, device=device, dtype=dtype, allow_pickle=allow_pickle)
        return state, config, str(files[0] if len(files) == 1 else path)
    elif path.is_file():
        config = _read_config(path.parent / "config.json")
        weights = path
    else:
        raise WeightsError(f"no such T2I-Adapter file or folder: {path}")
    return load_tensors(weights, device=device, dtype=dtype, allow_pickle=allow_pickle), config, str(weights)
