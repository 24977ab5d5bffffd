"""Parity of refiners-sd's solvers with diffusers' schedulers over whole trajectories."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler
from refiners_sd.solvers import DDIM, DPMSolverPlusPlus2M, Euler, Solver

TOLERANCE = 1e-4

# Stable Diffusion 1.5's scheduler/scheduler_config.json, as pipelines pass it to Scheduler.from_config.
SD15_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

CASES: list[tuple[type[Solver], type[Any], int, dict[str, Any]]] = [
    (DDIM, DDIMScheduler, 10, {}),
    (DDIM, DDIMScheduler, 30, {"prediction_type": "v_prediction"}),
    (DDIM, DDIMScheduler, 7, {"beta_schedule": "linear", "timestep_spacing": "trailing"}),
    (Euler, EulerDiscreteScheduler, 10, {}),
    (Euler, EulerDiscreteScheduler, 12, {"timestep_spacing": "leading"}),
    (Euler, EulerDiscreteScheduler, 9, {"timestep_spacing": "trailing", "prediction_type": "v_prediction"}),
    (DPMSolverPlusPlus2M, DPMSolverMultistepScheduler, 10, {}),
    (DPMSolverPlusPlus2M, DPMSolverMultistepScheduler, 20, {"timestep_spacing": "leading"}),
    (DPMSolverPlusPlus2M, DPMSolverMultistepScheduler, 20, {"final_sigmas_type": "sigma_min"}),
    (
        DPMSolverPlusPlus2M,
        DPMSolverMultistepScheduler,
        8,
        {"prediction_type": "v_prediction", "beta_schedule": "linear"},
    ),
]


def fake_model(x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """A deterministic stand-in for the UNet."""
    return 0.1 * x + torch.sin(timestep.float() / 100.0)


def case_id(case: tuple[type[Solver], type[Any], int, dict[str, Any]]) -> str:
    solver, _, steps, options = case
    return f"{solver.__name__}-{steps}-" + "-".join(f"{value}" for value in options.values())


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_trajectory_matches_diffusers(case: tuple[type[Solver], type[Any], int, dict[str, Any]]) -> None:
    solver_cls, scheduler_cls, steps, options = case
    scheduler = scheduler_cls.from_config({**SD15_SCHEDULER_CONFIG, **options})
    scheduler.set_timesteps(steps)
    solver = solver_cls(steps, **options)

    assert torch.equal(solver.timesteps, scheduler.timesteps)
    assert solver.timesteps.dtype == scheduler.timesteps.dtype
    assert abs(solver.init_noise_sigma - float(scheduler.init_noise_sigma)) < TOLERANCE

    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = noise * solver.init_noise_sigma
    theirs = noise * scheduler.init_noise_sigma
    for step, timestep in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(theirs, timestep)
        our_input = solver.scale_model_input(ours, step)
        assert (our_input - model_input).abs().max() < TOLERANCE
        theirs = scheduler.step(fake_model(model_input, timestep), timestep, theirs).prev_sample
        ours = solver(ours, fake_model(our_input, solver.timesteps[step]), step)
        assert (ours - theirs).abs().max() < TOLERANCE, f"step {step}"


@pytest.mark.parametrize(
    ("solver_cls", "scheduler_cls", "options"),
    [
        (DDIM, DDIMScheduler, {}),
        (Euler, EulerDiscreteScheduler, {"timestep_spacing": "leading"}),
        (DPMSolverPlusPlus2M, DPMSolverMultistepScheduler, {}),
    ],
)
def test_add_noise_matches_diffusers(
    solver_cls: type[Solver], scheduler_cls: type[Any], options: dict[str, Any]
) -> None:
    scheduler = scheduler_cls.from_config({**SD15_SCHEDULER_CONFIG, **options})
    scheduler.set_timesteps(10)
    solver = solver_cls(10, **options)
    clean = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    expected = scheduler.add_noise(clean, noise, scheduler.timesteps[3:4])
    assert (solver.add_noise(clean, noise, 3) - expected).abs().max() < TOLERANCE


def test_dpm_solver_restarts_at_step_zero() -> None:
    solver = DPMSolverPlusPlus2M(6)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    first = [x]
    for step in range(6):
        first.append(solver(first[-1], fake_model(first[-1], solver.timesteps[step]), step))
    second = [x]
    for step in range(6):
        second.append(solver(second[-1], fake_model(second[-1], solver.timesteps[step]), step))
    assert torch.equal(first[-1], second[-1])


def test_step_out_of_range() -> None:
    with pytest.raises(IndexError):
        DDIM(4)(torch.zeros(1), torch.zeros(1), 4)


# -- step counts and non-finite latents ----------------------------------------------------------------


@pytest.mark.parametrize("solver_cls", [DDIM, Euler, DPMSolverPlusPlus2M])
@pytest.mark.parametrize("steps", [0, -3, 1001, 2.5, True])
def test_every_solver_refuses_an_invalid_step_count(solver_cls: type, steps: object) -> None:
    from refiners_sd.solvers import SolverError

    with pytest.raises(SolverError, match="steps"):
        solver_cls(steps)


def test_dpm_solver_refuses_steps_that_repeat_timesteps() -> None:
    from refiners_sd.solvers import SolverError

    with pytest.raises(SolverError, match="use at most 999 steps"):
        DPMSolverPlusPlus2M(1000)
    solver = DPMSolverPlusPlus2M(999)
    assert len(set(solver.timesteps.tolist())) == 999
    x = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    for step in range(len(solver.timesteps)):
        x = solver(x, torch.zeros_like(x), step)
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("poison", ["prediction", "solver"])
def test_non_finite_latents_are_an_error_naming_the_cause(poison: str) -> None:
    from types import SimpleNamespace

    from refiners_sd.pipeline.stable_diffusion import LatentDiffusion, NonFiniteLatentsError

    class Unet:
        def set_timestep(self, timestep: torch.Tensor) -> None:
            self.timestep = timestep

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full_like(x, float("nan")) if poison == "prediction" else torch.zeros_like(x)

    solver = DDIM(4)
    if poison == "solver":
        solver.forward = lambda x, noise, step: torch.full_like(x, float("inf"))  # type: ignore[method-assign]
    pipeline = SimpleNamespace(unet=Unet(), device=torch.device("cpu"), set_conditioning=lambda conditioning: None)
    with pytest.raises(NonFiniteLatentsError) as caught:
        LatentDiffusion.denoise(pipeline, torch.zeros(1, 4, 2, 2), None, solver, guidance=1.0)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "step 1/4" in message
    assert ("UNet's prediction" in message) == (poison == "prediction")
    assert ("DDIM update" in message) == (poison == "solver")
