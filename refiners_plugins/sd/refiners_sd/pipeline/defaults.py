"""What a single-file checkpoint lacks, shipped with refiners-sd so that loading needs no network.

The noise schedules are those of the Stable Diffusion 1.5 and SDXL base pipelines (``scaled_linear`` betas
from 0.00085 to 0.012 over 1000 training steps, ``steps_offset`` 1, epsilon prediction); any solver
(``ddim``, ``euler``, ``dpm++2m``) is built on them. VAE scaling factors per architecture live in
:data:`refiners_sd.single_file.infer.SCALING_FACTORS` (0.18215 and 0.13025); the tokenizer data in
``refiners_sd/data`` (see :meth:`refiners_sd.CLIPTokenizer.bundled`). SDXL guides an absent negative
prompt with zero embeddings (``force_zeros_for_empty_prompt``), as the SDXL base pipeline does.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FORCE_ZEROS_FOR_EMPTY_PROMPT", "SCHEDULER_CONFIGS", "SD15_SCHEDULER_CONFIG", "SDXL_SCHEDULER_CONFIG"]

SD15_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "clip_sample": False,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}
"""Stable Diffusion 1.5's ``scheduler/scheduler_config.json``, with ``timestep_spacing`` set to the value its
scheduler class (PNDM) defaults to, so that solvers built from it space steps the same way."""

SDXL_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "clip_sample": False,
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "timestep_spacing": "leading",
    "use_karras_sigmas": False,
}
"""SDXL base 1.0's ``scheduler/scheduler_config.json``."""

SCHEDULER_CONFIGS: dict[str, dict[str, Any]] = {"sd15": SD15_SCHEDULER_CONFIG, "sdxl": SDXL_SCHEDULER_CONFIG}

FORCE_ZEROS_FOR_EMPTY_PROMPT = True
"""SDXL: without a negative prompt, guide against zero text embeddings (the SDXL base pipeline's setting)."""
