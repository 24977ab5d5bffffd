"""Errors of refiners-lora. Importing this module never imports torch."""

from __future__ import annotations

from refiners_core.errors import WeightsError


class LoraError(WeightsError):
    """A LoRA file does not fit the model (unmatched keys, bad shapes, missing components) or a LoRA
    operation is invalid (unknown name, duplicate name)."""
