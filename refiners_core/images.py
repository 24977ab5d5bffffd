"""Images given to models: one conversion from a PIL image or a tensor to a ``[B, C, H, W]`` tensor in ``[0, 1]``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from refiners_core.errors import RefinersError

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["image_to_tensor", "write_demo_condition_image", "write_demo_reference_image"]


def image_to_tensor(
    image: Image.Image | torch.Tensor,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    mode: str | None = None,
) -> torch.Tensor:
    """A PIL image, or a ``[C, H, W]`` / ``[B, C, H, W]`` tensor in ``[0, 1]``, as ``[B, C, H, W]`` in ``[0, 1]``.

    Args:
        image: the image. A PIL image is converted to ``mode`` first when given (``"RGB"``, ``"L"``).
        device, dtype: where and how the result lives (default: the tensor's own, or CPU float32 for PIL).
        mode: the PIL mode wanted (its number of bands is also checked for a tensor: 3 for RGB, 1 for L).

    Raises:
        RefinersError: a tensor of the wrong rank or channel count, or with values outside ``[0, 1]``.
    """
    if isinstance(image, torch.Tensor):
        tensor = image[None] if image.dim() == 3 else image
        if tensor.dim() != 4:
            raise RefinersError(f"an image tensor must be [C, H, W] or [B, C, H, W], got shape {list(image.shape)}")
        if mode is not None and tensor.shape[1] != _bands(mode):
            raise RefinersError(f"expected a {mode} image ({_bands(mode)} channels), got {tensor.shape[1]} channels")
        if not tensor.is_floating_point():
            raise RefinersError(f"an image tensor must be floating point in [0, 1], got {tensor.dtype}")
        if tensor.numel() and (tensor.min() < 0 or tensor.max() > 1):
            raise RefinersError("an image tensor must hold values in [0, 1]")
        return tensor.to(device=device, dtype=dtype or tensor.dtype)
    if mode is not None and image.mode != mode:
        image = image.convert(mode)
    elif image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    pixels = data.view(image.height, image.width, len(image.getbands())).permute(2, 0, 1)[None]
    return (pixels.to(dtype=torch.float32) / 255.0).to(device=device, dtype=dtype or torch.float32)


def _bands(mode: str) -> int:
    return {"RGB": 3, "L": 1, "RGBA": 4}.get(mode, 3)


def write_demo_condition_image(path: str | Path, size: tuple[int, int] = (64, 64)) -> Path:
    """Write a demo condition image (a white square outline on black, like an edge map); families' demo writers
    use it for adapters that take a condition image."""
    from PIL import Image, ImageDraw

    width, height = size
    image = Image.new("RGB", size, "black")
    ImageDraw.Draw(image).rectangle(
        (width // 4, height // 4, 3 * width // 4, 3 * height // 4), outline="white", width=max(1, width // 32)
    )
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target)
    return target


def write_demo_reference_image(path: str | Path, size: tuple[int, int] = (48, 40)) -> Path:
    """Write a demo reference image (a red disc on a blue-green gradient; not square, so that resizing and
    cropping are exercised); families' demo writers use it for adapters that take a reference image."""
    from PIL import Image, ImageDraw

    width, height = size
    image = Image.new("RGB", size)
    image.putdata([(0, 255 * x // width, 255 * y // height) for y in range(height) for x in range(width)])
    ImageDraw.Draw(image).ellipse((width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=(220, 30, 30))
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target)
    return target
