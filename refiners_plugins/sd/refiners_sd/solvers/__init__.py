"""Diffusion solvers for Stable Diffusion: DDIM, Euler and DPM-Solver++(2M), matching diffusers' schedulers."""

from refiners_sd.solvers.ddim import DDIM
from refiners_sd.solvers.dpm_solver import DPMSolverPlusPlus2M
from refiners_sd.solvers.euler import Euler
from refiners_sd.solvers.schedule import alphas_cumprod, make_betas, spaced_timesteps
from refiners_sd.solvers.solver import Solver, SolverError

__all__ = [
    "DDIM",
    "DPMSolverPlusPlus2M",
    "Euler",
    "Solver",
    "SolverError",
    "alphas_cumprod",
    "make_betas",
    "spaced_timesteps",
]
