"""The error type of refiners-train."""

from __future__ import annotations

from refiners_core.errors import RefinersError

__all__ = ["TrainError"]


class TrainError(RefinersError):
    """Bad training data, options or checkpoints: the message names the file or option at fault."""
