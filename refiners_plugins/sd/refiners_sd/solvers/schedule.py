"""Noise schedules of Stable Diffusion: betas, cumulative alphas, and the spacing of inference timesteps."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

__all__ = ["BetaSchedule", "TimestepSpacing", "alphas_cumprod", "make_betas", "spaced_timesteps"]

BetaSchedule = Literal["scaled_linear", "linear"]
TimestepSpacing = Literal["leading", "linspace", "trailing"]


def make_betas(
    num_train_timesteps: int = 1000,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    schedule: BetaSchedule = "scaled_linear",
) -> torch.Tensor:
    """The training noise schedule (float32): ``linear`` in beta, or ``scaled_linear`` (linear in sqrt(beta), SD's)."""
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    raise ValueError(f"unknown beta schedule {schedule!r} (expected 'scaled_linear' or 'linear')")


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """``prod(1 - beta)`` up to each training timestep: the signal fraction ``alpha_bar_t``."""
    return torch.cumprod(1.0 - betas, dim=0)


def spaced_timesteps(
    spacing: TimestepSpacing,
    num_inference_steps: int,
    num_train_timesteps: int = 1000,
    steps_offset: int = 0,
    rounded: bool = True,
) -> np.ndarray:
    """Decreasing inference timesteps (float64 array) spread over the training range.

    ``leading``: multiples of ``num_train_timesteps // steps`` plus ``steps_offset`` (SD's configs use 1);
    ``linspace``: evenly from ``num_train_timesteps - 1`` down to 0 (rounded unless ``rounded=False``);
    ``trailing``: evenly from ``num_train_timesteps - 1`` downwards, never reaching 0.
    """
    if not 0 < num_inference_steps <= num_train_timesteps:
        raise ValueError(f"num_inference_steps must be in [1, {num_train_timesteps}], got {num_inference_steps}")
    if spacing == "leading":
        ratio = num_train_timesteps // num_inference_steps
        return (np.arange(0, num_inference_steps) * ratio).round()[::-1].astype(np.float64) + steps_offset
    if spacing == "linspace":
        values = np.linspace(0, num_train_timesteps - 1, num_inference_steps)
        return (values.round() if rounded else values)[::-1].copy()
    if spacing == "trailing":
        stride = num_train_timesteps / num_inference_steps
        return np.arange(num_train_timesteps, 0, -stride).round() - 1
    raise ValueError(f"unknown timestep spacing {spacing!r} (expected 'leading', 'linspace' or 'trailing')")
