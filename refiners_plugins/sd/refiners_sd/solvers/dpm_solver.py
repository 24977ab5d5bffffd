"""DPM-Solver++ 2M: the second-order multistep solver on data predictions (x0)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from refiners_sd.solvers.schedule import TimestepSpacing
from refiners_sd.solvers.solver import Solver

__all__ = ["DPMSolverPlusPlus2M"]


class DPMSolverPlusPlus2M(Solver):
    """DPM-Solver++(2M), ``midpoint`` solver type, final sigma zero.

    Matches diffusers' ``DPMSolverMultistepScheduler`` defaults (order 2, ``lower_order_final``,
    ``linspace`` spacing over ``steps + 1`` points with the last dropped): the first step and the last
    step are first order, the others use the previous step's data prediction. The solver remembers that
    prediction between calls; calling step 0 starts a new trajectory.
    """

    default_spacing: TimestepSpacing = "linspace"

    def __init__(
        self,
        num_inference_steps: int,
        *,
        final_sigmas_type: Literal["zero", "sigma_min"] = "zero",
        lower_order_final: bool = True,
        **kwargs: object,
    ) -> None:
        self.final_sigmas_type = final_sigmas_type
        super().__init__(num_inference_steps, **kwargs)  # type: ignore[arg-type]
        self.lower_order_final = lower_order_final
        self._previous: tuple[int, torch.Tensor] | None = None

    def _make_timesteps(self) -> torch.Tensor:
        steps, train = self.num_inference_steps, self.num_train_timesteps
        values: np.ndarray  # float64 for linspace/trailing, int64 for leading; cast to int64 below
        if self.timestep_spacing == "linspace":
            values = np.linspace(0, train - 1, steps + 1).round()[::-1][:-1]
        elif self.timestep_spacing == "leading":
            ratio = train // (steps + 1)
            values = (np.arange(0, steps + 1) * ratio).round()[::-1][:-1] + self.steps_offset
        elif self.timestep_spacing == "trailing":
            values = np.arange(train, 0, -train / steps).round() - 1
        else:
            raise ValueError(f"unknown timestep spacing {self.timestep_spacing!r}")
        timesteps = values.copy().astype(np.int64)
        train_sigmas = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).numpy()
        sigmas = np.interp(timesteps, np.arange(len(train_sigmas)), train_sigmas)
        last = float(train_sigmas[0]) if self.final_sigmas_type == "sigma_min" else 0.0
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [last]]).astype(np.float32))
        return torch.from_numpy(timesteps)

    def _alpha_sigma_lambda(self, index: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        sigma = self.sigmas[index].to(device)
        alpha_t = 1 / (sigma**2 + 1) ** 0.5
        sigma_t = sigma * alpha_t
        return alpha_t, sigma_t, torch.log(alpha_t) - torch.log(sigma_t)

    def forward(self, x: torch.Tensor, predicted_noise: torch.Tensor, step: int) -> torch.Tensor:
        self._check_step(step)
        sample = x.float()
        alpha_s, sigma_s, lambda_s = self._alpha_sigma_lambda(step, x.device)
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(step + 1, x.device)
        if self.prediction_type == "epsilon":
            denoised = (sample - sigma_s * predicted_noise) / alpha_s
        else:
            denoised = alpha_s * sample - sigma_s * predicted_noise
        h = lambda_t - lambda_s
        is_last = step == self.num_inference_steps - 1
        first_order = (
            self._previous is None
            or self._previous[0] != step - 1
            or (
                is_last
                and (self.final_sigmas_type == "zero" or (self.lower_order_final and self.num_inference_steps < 15))
            )
        )
        if first_order:
            x_prev = (sigma_t / sigma_s) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * denoised
        else:
            assert self._previous is not None
            _, lambda_s1 = self._alpha_sigma_lambda(step - 1, x.device)[1:]
            r = (lambda_s - lambda_s1) / h
            d0, d1 = denoised, (1.0 / r) * (denoised - self._previous[1])
            x_prev = (
                (sigma_t / sigma_s) * sample
                - (alpha_t * (torch.exp(-h) - 1.0)) * d0
                - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * d1
            )
        self._previous = (step, denoised)
        return x_prev.to(x.dtype)
