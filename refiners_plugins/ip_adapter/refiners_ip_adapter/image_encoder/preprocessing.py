"""CLIP image preprocessing: resize the shortest side (bicubic), center crop, normalise with CLIP's mean/std."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Union

import torch
from torch.nn import functional as F

from refiners_core.images import image_to_tensor

if TYPE_CHECKING:
    from PIL import Image

ImageInput = Union["Image.Image", torch.Tensor]

__all__ = ["ImageInput", "center_crop", "preprocess_images", "resized_shape"]


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """``(height, width)`` once the shortest side is ``size``, the other side scaled and truncated as CLIP does."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def center_crop(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """The centered ``size x size`` window of ``[..., H, W]`` (top/left offsets rounded down)."""
    height, width = pixels.shape[-2:]
    if height < size or width < size:
        raise ValueError(f"cannot crop {size}x{size} out of {height}x{width}")
    top, left = (height - size) // 2, (width - size) // 2
    return pixels[..., top : top + size, left : left + size]


def _is_pil(image: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is optional
        return False
    return isinstance(image, Image.Image)


def _from_pil(image: Image.Image, size: int) -> torch.Tensor:
    from PIL import Image

    rgb = image.convert("RGB")
    height, width = resized_shape(rgb.height, rgb.width, size)
    resized = rgb.resize((width, height), resample=Image.Resampling.BICUBIC)
    return center_crop(image_to_tensor(resized, mode="RGB")[0], size)


def _from_tensor(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"image tensors must be [3, H, W] or [B, 3, H, W] in [0, 1], got {tuple(images.shape)}")
    images = images.float()
    height, width = resized_shape(images.shape[-2], images.shape[-1], size)
    if (height, width) != tuple(images.shape[-2:]):
        images = F.interpolate(images, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return center_crop(images.clamp(0.0, 1.0), size)


def preprocess_images(
    images: ImageInput | Sequence[ImageInput],
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Turn PIL images or ``[0, 1]`` tensors (``[3, H, W]``, ``[B, 3, H, W]``, or a list of them) into
    normalised pixels ``[B, 3, size, size]`` on ``device`` as ``dtype``."""
    items = list(images) if isinstance(images, list | tuple) else [images]
    if not items:
        raise ValueError("no image given")
    batches: list[torch.Tensor] = []
    for item in items:
        if isinstance(item, torch.Tensor):
            batches.append(_from_tensor(item, size))
        elif _is_pil(item):
            batches.append(_from_pil(item, size).unsqueeze(0))  # type: ignore[arg-type]
        else:
            raise TypeError(f"expected PIL images or tensors, got {type(item).__name__}")
    pixels = torch.cat(batches)
    mean_t = torch.tensor(mean, dtype=pixels.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=pixels.dtype).view(1, 3, 1, 1)
    return ((pixels - mean_t) / std_t).to(device=device, dtype=dtype)
