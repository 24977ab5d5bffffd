"""Euler (the "Euler discrete" ODE solver in the sigma parametrisation, no churn)."""

from __future__ import annotations

import numpy as np
import torch

from refiners_sd.solvers.schedule import TimestepSpacing, spaced_timesteps
from refiners_sd.solvers.solver import Solver

__all__ = ["Euler"]


class Euler(Solver):
    """First-order Euler steps on ``x / sqrt(1 + sigma^2)``-scaled latents; the last sigma is zero.

    Defaults match diffusers' ``EulerDiscreteScheduler``: ``linspace`` spacing with unrounded (float)
    timesteps and sigmas interpolated linearly between training timesteps. SDXL's scheduler config uses
    ``timestep_spacing="leading"`` with ``steps_offset=1``. Start from ``randn * init_noise_sigma``.
    """

    default_spacing: TimestepSpacing = "linspace"

    def _make_timesteps(self) -> torch.Tensor:
        values = spaced_timesteps(
            self.timestep_spacing, self.num_inference_steps, self.num_train_timesteps, self.steps_offset, rounded=False
        )
        train_sigmas = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).numpy()
        sigmas = np.interp(values.astype(np.float32), np.arange(len(train_sigmas)), train_sigmas)
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
        return torch.from_numpy(values.astype(np.float32))

    @property
    def init_noise_sigma(self) -> float:
        max_sigma = float(self.sigmas.max())
        if self.timestep_spacing == "leading":
            return (max_sigma**2 + 1) ** 0.5
        return max_sigma

    def scale_model_input(self, x: torch.Tensor, step: int) -> torch.Tensor:
        self._check_step(step)
        return x / ((self.sigmas[step] ** 2 + 1) ** 0.5).to(device=x.device, dtype=x.dtype)

    def add_noise(self, x: torch.Tensor, noise: torch.Tensor, step: int) -> torch.Tensor:
        return x + self.sigmas[step].to(device=x.device, dtype=x.dtype) * noise

    def forward(self, x: torch.Tensor, predicted_noise: torch.Tensor, step: int) -> torch.Tensor:
        self._check_step(step)
        sample = x.float()
        output = predicted_noise.float()
        sigma, sigma_next = (value.to(x.device) for value in (self.sigmas[step], self.sigmas[step + 1]))
        if self.prediction_type == "epsilon":
            denoised = sample - sigma * output
        else:
            denoised = output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
        derivative = (sample - denoised) / sigma
        return (sample + derivative * (sigma_next - sigma)).to(x.dtype)
