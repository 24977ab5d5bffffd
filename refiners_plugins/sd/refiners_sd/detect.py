"""Cheap recognition of Stable Diffusion base models on disk (config files only; never imports torch).

:func:`architecture_of` tells ``sd15`` from ``sdxl`` for a diffusers pipeline folder (``model_index.json`` /
``unet/config.json``); single-file checkpoints are recognised by :func:`single_file_architecture`, the one
place a header-based check for ``.safetensors`` files belongs. The base-model families' ``detect`` hooks call it.
"""

from __future__ import annotations

from pathlib import Path

from refiners_core.plugins.detection import read_json_object, safetensors_keys

__all__ = ["architecture_of", "detect_sd15", "detect_sdxl", "folder_architecture", "single_file_architecture"]

SDXL_PIPELINES = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")


def folder_architecture(folder: Path) -> str | None:
    """``sd15``/``sdxl`` for a diffusers pipeline folder, ``None`` when it is not one."""
    index = read_json_object(folder / "model_index.json")
    unet = read_json_object(folder / "unet" / "config.json")
    if index is None and unet is None:
        return None
    if index is not None and index.get("_class_name") in SDXL_PIPELINES:
        return "sdxl"
    if (folder / "text_encoder_2").is_dir() or (unet or {}).get("addition_embed_type") == "text_time":
        return "sdxl"
    if unet is None and "unet" not in (index or {}):
        return None
    return "sd15"


def single_file_architecture(path: Path) -> str | None:
    """``sd15``/``sdxl`` for a single-file ``.safetensors`` checkpoint (from its header's keys), else ``None``.

    Pickled checkpoints are never opened here: pass them to the loader with the explicit opt-in.
    """
    from refiners_sd.single_file.layout import architecture_from_keys

    return architecture_from_keys(safetensors_keys(path)) if path.suffix == ".safetensors" else None


def architecture_of(path: Path) -> str | None:
    """The Stable Diffusion architecture of a local folder or file, or ``None``."""
    path = Path(path)
    if path.is_dir():
        return folder_architecture(path)
    if path.is_file():
        return single_file_architecture(path)
    return None


def detect_sd15(path: Path) -> bool:
    """Whether ``path`` holds a Stable Diffusion 1.x base model (the ``sd15`` family's ``detect``)."""
    return architecture_of(path) == "sd15"


def detect_sdxl(path: Path) -> bool:
    """Whether ``path`` holds a Stable Diffusion XL base model (the ``sdxl`` family's ``detect``)."""
    return architecture_of(path) == "sdxl"
