"""The common shape of a diffusion solver: a schedule of timesteps and one update per step."""

from __future__ import annotations

from typing import Literal

import torch

from refiners_core.errors import RefinersError
from refiners_core.module import Module
from refiners_sd.solvers.schedule import BetaSchedule, TimestepSpacing, alphas_cumprod, make_betas

__all__ = ["PredictionType", "Solver", "SolverError"]

# a generous bound on the search for the largest usable step count in error messages
_MAX_STEP_SEARCH = 64


class SolverError(RefinersError, ValueError):
    """A solver cannot run with these settings: a step count its schedule cannot space without repeats."""


PredictionType = Literal["epsilon", "v_prediction"]


class Solver(Module):
    """Turns a noise prediction into the next, less noisy latents: ``solver(x, predicted_noise, step) -> x_prev``.

    ``step`` is the index (0 to ``num_inference_steps - 1``) of ``timesteps[step]``, the timestep the model
    was called with. Before calling the model, scale its input with :meth:`scale_model_input`; start from
    noise times :attr:`init_noise_sigma`. Defaults follow Stable Diffusion's scheduler config
    (``scaled_linear`` betas from 0.00085 to 0.012 over 1000 steps, ``steps_offset=1``).
    """

    default_spacing: TimestepSpacing = "leading"

    def __init__(
        self,
        num_inference_steps: int,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: BetaSchedule = "scaled_linear",
        timestep_spacing: TimestepSpacing | None = None,
        steps_offset: int = 1,
        prediction_type: PredictionType = "epsilon",
    ) -> None:
        super().__init__()
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"unknown prediction type {prediction_type!r} (expected 'epsilon' or 'v_prediction')")
        self.num_inference_steps = num_inference_steps
        self.num_train_timesteps = num_train_timesteps
        self.beta_schedule = beta_schedule
        self.timestep_spacing: TimestepSpacing = timestep_spacing or self.default_spacing
        self.steps_offset = steps_offset
        self.prediction_type: PredictionType = prediction_type
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int):
            raise SolverError(f"the number of steps must be an integer, got {num_inference_steps!r}")
        if not 0 < num_inference_steps <= num_train_timesteps:
            raise SolverError(f"the number of steps must be in [1, {num_train_timesteps}], got {num_inference_steps}")
        self.alphas_cumprod = alphas_cumprod(make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule))
        self.timesteps = self._make_timesteps()
        if len(set(self.timesteps.tolist())) != len(self.timesteps):
            raise SolverError(
                f"{type(self).__name__} with {self.timestep_spacing!r} spacing repeats timesteps for "
                f"{num_inference_steps} steps over {num_train_timesteps} training timesteps (a repeated timestep "
                f"gives NaN); use at most {self._max_distinct_steps()} steps"
            )

    def _make_timesteps(self) -> torch.Tensor:
        """The inference timesteps, in decreasing order."""
        raise NotImplementedError

    def _max_distinct_steps(self) -> int:
        """The largest step count below the current one whose timesteps are all distinct (for messages)."""
        requested = self.num_inference_steps
        try:
            for steps in range(requested - 1, max(requested - _MAX_STEP_SEARCH, 0), -1):
                self.num_inference_steps = steps
                timesteps = self._make_timesteps()
                if len(set(timesteps.tolist())) == len(timesteps):
                    return steps
            return max(requested - _MAX_STEP_SEARCH, 1)
        finally:
            self.num_inference_steps = requested

    @property
    def init_noise_sigma(self) -> float:
        """Standard deviation of the initial noise (multiply ``randn`` latents by it)."""
        return 1.0

    def scale_model_input(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """The model's input at ``step`` (identity for variance-preserving solvers)."""
        return x

    def add_noise(self, x: torch.Tensor, noise: torch.Tensor, step: int) -> torch.Tensor:
        """Noise clean latents ``x`` to the level of ``timesteps[step]`` (image-to-image starts there)."""
        alpha_bar = self.alphas_cumprod[int(self.timesteps[step])].to(device=x.device, dtype=x.dtype)
        return alpha_bar.sqrt() * x + (1 - alpha_bar).sqrt() * noise

    def _check_step(self, step: int) -> None:
        if not 0 <= step < self.num_inference_steps:
            raise IndexError(f"step {step} out of range for {self.num_inference_steps} inference steps")

    def forward(self, x: torch.Tensor, predicted_noise: torch.Tensor, step: int) -> torch.Tensor:
        """Latents at the next (less noisy) timestep, from the latents at ``timesteps[step]`` and the model output."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (
            f"num_inference_steps={self.num_inference_steps}, timestep_spacing={self.timestep_spacing!r}, "
            f"prediction_type={self.prediction_type!r}"
        )
