"""Build a solver from a diffusers ``scheduler_config.json``, whatever scheduler class the file names.

Only the noise-schedule fields carry over (betas, training steps, offset, spacing, prediction type), as
diffusers' ``SomeScheduler.from_config(pipeline.scheduler.config)`` does: a field the file lacks takes the
solver's own default (``timestep_spacing`` in particular).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from refiners_core.config import read_config
from refiners_sd.solvers import DDIM, DPMSolverPlusPlus2M, Euler, Solver

__all__ = ["SOLVERS", "load_scheduler_config", "solver_from_config"]

SOLVERS: dict[str, type[Solver]] = {"ddim": DDIM, "euler": Euler, "dpm++2m": DPMSolverPlusPlus2M}

_SHARED_FIELDS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "timestep_spacing",
    "steps_offset",
    "prediction_type",
)
_EXTRA_FIELDS: dict[type[Solver], tuple[str, ...]] = {
    DDIM: ("set_alpha_to_one",),
    DPMSolverPlusPlus2M: ("final_sigmas_type", "lower_order_final"),
}


def load_scheduler_config(path: str | Path) -> dict[str, Any]:
    """Read a ``scheduler_config.json`` file (:class:`~refiners_core.ConfigError`, a ``ValueError``, when it
    cannot be read or holds no JSON object)."""
    return read_config(path, "scheduler config")


def solver_from_config(name: str, num_inference_steps: int, config: Mapping[str, Any] | None = None) -> Solver:
    """The solver ``name`` (``ddim``, ``euler`` or ``dpm++2m``) for ``num_inference_steps`` on ``config``'s schedule.

    Raises:
        ValueError: an unknown solver name, or a schedule the solvers do not implement (``trained_betas``).
    """
    solver_cls = SOLVERS.get(name)
    if solver_cls is None:
        raise ValueError(f"unknown solver {name!r} (expected one of: {', '.join(SOLVERS)})")
    config = dict(config or {})
    if config.get("trained_betas") is not None:
        raise ValueError("scheduler configs with explicit 'trained_betas' are not supported")
    fields = _SHARED_FIELDS + _EXTRA_FIELDS.get(solver_cls, ())
    options = {key: config[key] for key in fields if config.get(key) is not None}
    return solver_cls(num_inference_steps, **options)
