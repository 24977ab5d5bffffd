"""The ``sd15``/``sdxl`` base-model families' loader and demo writer (the base-model contract of refiners-core)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from refiners_core import RefinersError
from refiners_sd.pipeline import StableDiffusion1, StableDiffusionXL, load_pipeline

__all__ = ["load_base", "write_demo_base"]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise RefinersError(f"unknown dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_base(
    path: str | Path,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    solver: str = "ddim",
    vae: str | Path | None = None,
    allow_pickle: bool = False,
    **options: Any,
) -> StableDiffusion1 | StableDiffusionXL:
    """Load a Stable Diffusion pipeline (the ``loader`` of the ``sd15`` and ``sdxl`` families).

    Args:
        path: a diffusers pipeline folder or a single-file checkpoint.
        device, dtype: where and how the weights live (``dtype`` may be a name: ``float16``...).
        solver: ``ddim``, ``euler`` or ``dpm++2m``.
        vae: a VAE replacing the pipeline's (see :func:`refiners_sd.load_pipeline`).
        allow_pickle: the user's opt-in for a pickled ``.ckpt``.

    Raises:
        RefinersError: unknown options, or files that do not form a pipeline (naming what is missing).
    """
    if options:
        raise RefinersError(f"unknown Stable Diffusion options: {', '.join(sorted(options))}")
    torch_dtype = _dtype(dtype)
    try:
        return load_pipeline(path, device=device, dtype=torch_dtype, solver=solver, vae=vae, allow_pickle=allow_pickle)
    except RefinersError:
        raise
    except ValueError as error:
        raise RefinersError(f"{path}: {error}") from error


def write_demo_base(folder: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny random SD1.5-topology pipeline folder under ``folder/base`` (the ``sd15`` family's demo)."""
    from refiners_sd.demo import build_tiny_base

    return build_tiny_base(Path(folder) / "base", seed=seed)
