"""DDIM, deterministic (eta = 0): Stable Diffusion's classic solver."""

from __future__ import annotations

import torch

from refiners_sd.solvers.schedule import TimestepSpacing, spaced_timesteps
from refiners_sd.solvers.solver import Solver

__all__ = ["DDIM"]


class DDIM(Solver):
    """Denoising diffusion implicit model steps, ``eta = 0``.

    Matches diffusers' ``DDIMScheduler.from_config`` of SD 1.5's scheduler config: ``leading`` spacing,
    ``steps_offset=1``, ``set_alpha_to_one=False`` (past the last step, alpha_bar is that of timestep 0),
    no sample clipping. As in diffusers, the previous timestep is ``t - num_train_timesteps // steps``
    whatever the spacing.
    """

    default_spacing: TimestepSpacing = "leading"

    def __init__(self, num_inference_steps: int, *, set_alpha_to_one: bool = False, **kwargs: object) -> None:
        super().__init__(num_inference_steps, **kwargs)  # type: ignore[arg-type]
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]

    def _make_timesteps(self) -> torch.Tensor:
        values = spaced_timesteps(
            self.timestep_spacing, self.num_inference_steps, self.num_train_timesteps, self.steps_offset
        )
        return torch.from_numpy(values.astype("int64"))

    def forward(self, x: torch.Tensor, predicted_noise: torch.Tensor, step: int) -> torch.Tensor:
        self._check_step(step)
        timestep = int(self.timesteps[step])
        previous = timestep - self.num_train_timesteps // self.num_inference_steps
        alpha_bar = self.alphas_cumprod[timestep]
        alpha_bar_prev = self.alphas_cumprod[previous] if previous >= 0 else self.final_alpha_cumprod
        alpha_bar, alpha_bar_prev = (value.to(device=x.device, dtype=x.dtype) for value in (alpha_bar, alpha_bar_prev))
        if self.prediction_type == "epsilon":
            noise = predicted_noise
            denoised = (x - (1 - alpha_bar) ** 0.5 * noise) / alpha_bar**0.5
        else:
            denoised = alpha_bar**0.5 * x - (1 - alpha_bar) ** 0.5 * predicted_noise
            noise = alpha_bar**0.5 * predicted_noise + (1 - alpha_bar) ** 0.5 * x
        return alpha_bar_prev**0.5 * denoised + (1 - alpha_bar_prev) ** 0.5 * noise
