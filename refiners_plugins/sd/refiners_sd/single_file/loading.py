"""Load SD 1.x and SDXL single-file checkpoints (and single VAE files) as refiners-sd pipelines, offline.

Each component is built on the ``meta`` device from a config read off the tensor shapes, then its
tensors are read from the file straight to ``device`` and ``dtype`` and assigned: memory holds the
model, never a second copy of it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from refiners_core import WeightsError
from refiners_core.module_map import load_by_module_map
from refiners_sd.clip import CLIPTextEncoder, CLIPTextEncoderG, CLIPTextEncoderL, CLIPTokenizer, DoubleTextEncoder
from refiners_sd.clip.bpe import VOCAB_SIZE
from refiners_sd.clip.loading import text_encoder_module_map
from refiners_sd.pipeline.defaults import FORCE_ZEROS_FOR_EMPTY_PROMPT, SCHEDULER_CONFIGS
from refiners_sd.pipeline.layout import read_layout
from refiners_sd.pipeline.stable_diffusion import StableDiffusion1, StableDiffusionXL
from refiners_sd.single_file.infer import clip_config, unet_config, vae_config
from refiners_sd.single_file.layout import (
    Architecture,
    architecture_from_keys,
    describe_foreign,
    split_keys,
)
from refiners_sd.single_file.names import ldm_vae_key_names, ldm_vae_to_diffusers, open_clip_to_transformers
from refiners_sd.single_file.reader import CheckpointFile, open_checkpoint, read_safetensors_header
from refiners_sd.unet.config import UNetConfig, UnsupportedConfigError
from refiners_sd.unet.mapping import ldm_module_map
from refiners_sd.unet.sd1 import SD1UNet
from refiners_sd.unet.sdxl import SDXLUNet
from refiners_sd.vae import AutoencoderKL
from refiners_sd.vae.loading import autoencoder_module_map

__all__ = ["detect_architecture", "load_single_file", "load_vae"]

Device = torch.device | str | None
Renamer = Callable[[Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]]

_VAE_FILE_PREFIXES = ("first_stage_model.", "vae.")
_IGNORED_VAE_KEYS = ("model_ema.decay", "model_ema.num_updates")


def _check_no_meta(model: nn.Module, source: str) -> None:
    left = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if left:
        raise WeightsError(f"{source}: no weights for {', '.join(left[:5])}")


def _load_into(
    model: nn.Module,
    module_map: Mapping[str, nn.Module],
    checkpoint: CheckpointFile,
    keys: Mapping[str, str],
    device: Device,
    dtype: torch.dtype | None,
    source: str,
    rename: Renamer | None = None,
) -> None:
    """Read ``keys`` (``{name the map expects: key in the file}``) into the meta-built ``model``."""
    loaded = checkpoint.load(keys.values(), device=device, dtype=dtype)
    tensors: Mapping[str, torch.Tensor] = {short: loaded[full] for short, full in keys.items()}
    if rename is not None:
        tensors = rename(tensors)
    load_by_module_map(model, module_map, tensors, source=source)
    _check_no_meta(model, source)
    model.eval()


def _text_encoder(
    cls: type[CLIPTextEncoder],
    checkpoint: CheckpointFile,
    keys: dict[str, str],
    device: Device,
    dtype: torch.dtype,
    source: str,
    open_clip: bool,
) -> CLIPTextEncoder:
    if open_clip:
        shapes = {short: checkpoint.shapes[full] for short, full in keys.items()}
        rename: Renamer = open_clip_to_transformers
    else:
        keys = {short.removeprefix("text_model."): full for short, full in keys.items()}
        shapes = {short: checkpoint.shapes[full] for short, full in keys.items()}
        rename = dict
    config = clip_config(shapes, source, open_clip=open_clip)
    if config.vocab_size != VOCAB_SIZE:
        raise WeightsError(
            f"{source}: a vocabulary of {config.vocab_size} tokens, but the bundled CLIP tokenizer has {VOCAB_SIZE}"
        )
    encoder = cls(config, device="meta")
    _load_into(encoder, text_encoder_module_map(encoder), checkpoint, keys, device, dtype, source, rename)
    return encoder


def _unet(
    checkpoint: CheckpointFile,
    keys: dict[str, str],
    architecture: Architecture,
    device: Device,
    dtype: torch.dtype,
    source: str,
    pooled_dim: int | None,
) -> SD1UNet | SDXLUNet:
    shapes = {short: checkpoint.shapes[full] for short, full in keys.items()}
    config = unet_config(shapes, architecture, source, pooled_dim=pooled_dim)
    if config["in_channels"] != 4:
        raise WeightsError(
            f"{source}: the UNet takes {config['in_channels']} input channels; only text-to-image UNets (4) are "
            "supported (inpainting and IC-Light UNets are not)"
        )
    try:
        unet_settings = UNetConfig.from_dict(config)
    except UnsupportedConfigError as error:
        raise WeightsError(f"{source}: {error}") from error
    unet = (SDXLUNet if architecture == "sdxl" else SD1UNet)(unet_settings, device="meta")
    _load_into(unet, ldm_module_map(unet), checkpoint, keys, device, dtype, source)
    return unet


def _vae_from_checkpoint(
    checkpoint: CheckpointFile,
    keys: Mapping[str, str],
    architecture: Architecture,
    device: Device,
    dtype: torch.dtype,
    source: str,
) -> AutoencoderKL:
    """``keys``: ``{name without prefix: key in the file}``, LDM or diffusers names (told apart here)."""
    ldm = any(name.startswith(("encoder.down.", "decoder.up.", "encoder.mid.", "decoder.mid.")) for name in keys)
    if ldm:
        names = ldm_vae_key_names(list(keys))
        shapes = {names[short]: checkpoint.shapes[full] for short, full in keys.items()}
        rename: Renamer = ldm_vae_to_diffusers
    else:
        from refiners_sd.vae.loading import _modernize

        shapes = {_modernize(short): checkpoint.shapes[full] for short, full in keys.items()}
        rename = lambda tensors: {_modernize(key): value for key, value in tensors.items()}  # noqa: E731
    config = vae_config(shapes, architecture, source)
    vae = AutoencoderKL(config, device="meta")
    _load_into(vae, autoencoder_module_map(vae), checkpoint, keys, device, dtype, source, rename)
    return vae


def _vae_dtype(architecture: Architecture, dtype: torch.dtype) -> torch.dtype:
    """The SDXL VAE overflows in float16: keep it in float32 then (diffusers' ``force_upcast``)."""
    return torch.float32 if architecture == "sdxl" and dtype == torch.float16 else dtype


def _require_architecture(checkpoint: CheckpointFile) -> Architecture:
    architecture = architecture_from_keys(checkpoint.shapes)
    if architecture is not None:
        return architecture
    foreign = describe_foreign(checkpoint.shapes)
    what = f"it looks like {foreign}, which refiners-sd does not run" if foreign else "its keys match neither"
    raise WeightsError(
        f"{checkpoint.path} is not an SD 1.x or SDXL single-file checkpoint ({what}; expected a UNet under "
        "model.diffusion_model. with cond_stage_model.transformer. (SD 1.x) or conditioner.embedders.0/1. (SDXL))"
    )


def load_single_file(
    path: str | Path,
    device: Device = None,
    dtype: torch.dtype | None = None,
    solver: str = "ddim",
    *,
    allow_pickle: bool = False,
) -> StableDiffusion1 | StableDiffusionXL:
    """Load an SD 1.x or SDXL single-file checkpoint (A1111/ComfyUI layout) as a pipeline, without network.

    The architecture comes from the key names, the sizes from the tensor shapes (see
    :mod:`refiners_sd.single_file.infer`); scheduler, VAE scaling factor and tokenizers are the ones
    bundled with refiners-sd. ``dtype=None`` loads in float32; under float16 the SDXL VAE stays in
    float32. Files holding ``model_ema.*`` use the regular ``model.diffusion_model.*`` weights.

    Raises:
        WeightsError: a missing, truncated or unreadable file, another architecture, unknown keys or a
            missing component, each naming the file.
        PickleRefusedError: a pickled ``.ckpt`` without ``allow_pickle=True``.
    """
    checkpoint = open_checkpoint(path, allow_pickle=allow_pickle)
    architecture = _require_architecture(checkpoint)
    source = str(checkpoint.path)
    parts = split_keys(source, checkpoint.shapes, architecture).components
    dtype = dtype or torch.float32
    text_l = _text_encoder(
        CLIPTextEncoderL, checkpoint, parts["text_encoder"], device, dtype, f"{source} (CLIP text encoder)", False
    )
    text_g = None
    pooled_dim = None
    if architecture == "sdxl":
        text_g = _text_encoder(
            CLIPTextEncoderG, checkpoint, parts["text_encoder_2"], device, dtype, f"{source} (OpenCLIP bigG)", True
        )
        pooled_dim = text_g.config.projection_dim
    unet = _unet(checkpoint, parts["unet"], architecture, device, dtype, f"{source} (UNet)", pooled_dim)
    vae = _vae_from_checkpoint(
        checkpoint, parts["vae"], architecture, device, _vae_dtype(architecture, dtype), f"{source} (VAE)"
    )
    scheduler = SCHEDULER_CONFIGS[architecture]
    if text_g is None:
        return StableDiffusion1(unet, text_l, CLIPTokenizer.bundled(), vae, scheduler, solver=solver)
    return StableDiffusionXL(
        unet,
        DoubleTextEncoder(text_l, text_g),
        CLIPTokenizer.bundled(),
        CLIPTokenizer.bundled(pad_token="!"),
        vae,
        scheduler,
        solver=solver,
        force_zeros_for_empty_prompt=FORCE_ZEROS_FOR_EMPTY_PROMPT,
    )


def load_vae(
    path: str | Path,
    architecture: Architecture,
    device: Device = None,
    dtype: torch.dtype | None = None,
    *,
    allow_pickle: bool = False,
) -> AutoencoderKL:
    """Load a VAE to swap into a pipeline of ``architecture`` (its latent scaling factor).

    ``path``: a diffusers VAE folder (``config.json`` + weights; its ``force_upcast`` keeps a float16
    load in float32), or a single file with diffusers names (``encoder.down_blocks...``, e.g.
    ``madebyollin/sdxl-vae-fp16-fix``) or LDM names (``encoder.down...``, bare or under
    ``first_stage_model.``/``vae.``), sized from its shapes and loaded in ``dtype`` (float32 when ``None``).
    """
    path = Path(path).expanduser()
    dtype = dtype or torch.float32
    if path.is_dir():
        config_path = path / "config.json"
        try:
            upcast = bool(json.loads(config_path.read_text(encoding="utf-8")).get("force_upcast", False))
        except (OSError, ValueError) as error:
            raise WeightsError(f"{path} is not a diffusers VAE folder: cannot read {config_path} ({error})") from error
        folder_dtype = torch.float32 if upcast and dtype == torch.float16 else dtype
        return AutoencoderKL.from_diffusers(path, device=device, dtype=folder_dtype)
    checkpoint = open_checkpoint(path, allow_pickle=allow_pickle)
    names = [key for key in checkpoint.shapes if key not in _IGNORED_VAE_KEYS]
    prefix = next((p for p in _VAE_FILE_PREFIXES if names and all(key.startswith(p) for key in names)), "")
    keys = {key[len(prefix) :]: key for key in names}
    return _vae_from_checkpoint(checkpoint, keys, architecture, device, dtype, f"{checkpoint.path} (VAE)")


def detect_architecture(path: str | Path, *, allow_pickle: bool = False) -> Architecture | None:
    """``"sd15"``, ``"sdxl"`` or ``None`` for a diffusers pipeline folder or a single-file checkpoint.

    Cheap: reads a folder's ``unet/config.json`` (and whether ``text_encoder_2/`` exists) or a
    safetensors header, never tensor data. A pickled file gives ``None`` unless ``allow_pickle=True``
    (then it is opened with ``torch.load(weights_only=True, mmap=True)``). A missing or unreadable path
    gives ``None``.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        try:
            return read_layout(path).topology
        except WeightsError:
            return None
    if not path.is_file():
        return None
    try:
        if allow_pickle:
            return architecture_from_keys(open_checkpoint(path, allow_pickle=True).shapes)
        entries, _ = read_safetensors_header(path, check_size=False)
    except (WeightsError, OSError):
        return None
    return architecture_from_keys(entries)
