"""Classifier-free guidance: one UNet call on the batch ``[unconditional, conditional]``, then extrapolate."""

from __future__ import annotations

import torch

__all__ = ["classifier_free_guidance", "uses_guidance"]


def uses_guidance(scale: float) -> bool:
    """Whether ``scale`` asks for guidance (above 1, as diffusers decides; 1 or less runs the prompt alone)."""
    return scale > 1.0


def classifier_free_guidance(prediction: torch.Tensor, scale: float) -> torch.Tensor:
    """``uncond + scale * (cond - uncond)`` from a prediction on ``cat([uncond, cond])`` (batch ``2B`` -> ``B``)."""
    if prediction.shape[0] % 2:
        raise ValueError(f"guidance needs a batch of [unconditional, conditional] pairs, got {prediction.shape[0]}")
    unconditional, conditional = prediction.chunk(2)
    return unconditional + scale * (conditional - unconditional)
