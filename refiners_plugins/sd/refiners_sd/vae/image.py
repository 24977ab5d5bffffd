"""Conversions between PIL images (``[0, 255]``) and the VAE's image tensors (``[-1, 1]``).

Pillow is imported on first use only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from refiners_core.images import image_to_tensor as unit_image_to_tensor

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["image_to_tensor", "tensor_to_image", "tensor_to_images"]


def image_to_tensor(
    image: Image.Image, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """An RGB PIL image -> ``[1, 3, H, W]`` tensor in ``[-1, 1]``."""
    pixels = unit_image_to_tensor(image, mode="RGB")
    return (pixels * 2.0 - 1.0).to(device=device, dtype=dtype or torch.float32)


def tensor_to_images(tensor: torch.Tensor) -> list[Image.Image]:
    """A ``[B, 3, H, W]`` tensor in ``[-1, 1]`` -> B RGB PIL images (values clamped, rounded)."""
    from PIL import Image

    pixels = ((tensor.detach().float().cpu().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(item.permute(1, 2, 0).contiguous().numpy()) for item in pixels]


def tensor_to_image(tensor: torch.Tensor) -> Image.Image:
    """A ``[1, 3, H, W]`` (or ``[3, H, W]``) tensor in ``[-1, 1]`` -> one RGB PIL image."""
    batch = tensor[None] if tensor.dim() == 3 else tensor
    if batch.shape[0] != 1:
        raise ValueError(f"expected one image, got a batch of {batch.shape[0]} (use tensor_to_images)")
    return tensor_to_images(batch)[0]
