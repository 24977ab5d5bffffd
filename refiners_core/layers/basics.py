"""Shape manipulation and elementwise helpers."""

from __future__ import annotations

from typing import Any

import torch

from refiners_core.module import Module


class Identity(Module):
    """Returns its input."""

    def forward(self, x: Any) -> Any:
        return x


class Multiply(Module):
    """``scale * x + bias`` with plain float constants (settable at any time)."""

    def __init__(self, scale: float = 1.0, bias: float = 0.0) -> None:
        super().__init__()
        self.scale = scale
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x + self.bias

    def extra_repr(self) -> str:
        return f"scale={self.scale}" + (f", bias={self.bias}" if self.bias else "")


class Cos(Module):
    """Elementwise cosine."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cos(x)


class Sin(Module):
    """Elementwise sine."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)


class Reshape(Module):
    """Reshapes every dimension but the batch one: ``x.reshape(x.shape[0], *shape)``."""

    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class Flatten(Module):
    """``torch.flatten(x, start_dim, end_dim)``."""

    def __init__(self, start_dim: int = 0, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim = start_dim
        self.end_dim = end_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Unflatten(Module):
    """``x.unflatten(dim, sizes)``."""

    def __init__(self, dim: int, sizes: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.sizes = sizes

    def forward(self, x: torch.Tensor, sizes: tuple[int, ...] | torch.Size | None = None) -> torch.Tensor:
        return x.unflatten(self.dim, sizes if sizes is not None else self.sizes)  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class SpatialSize(Module):
    """``x.shape[2:]``: the spatial size of a ``[B, C, H, W]`` tensor (fed to ``Unflatten`` or ``Interpolate``)."""

    def forward(self, x: torch.Tensor) -> torch.Size:
        return x.shape[2:]


class Contiguous(Module):
    """Returns its input in contiguous memory (a copy only when it is not already).

    Put after a ``Transpose``/``Unflatten`` that turns tokens back into an image: the resulting strided
    (channels-last) view makes the following convolutions convert their weights on every call on CPU.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous()


class Transpose(Module):
    """Swaps two dimensions."""

    def __init__(self, dim0: int, dim1: int) -> None:
        super().__init__()
        self.dim0 = dim0
        self.dim1 = dim1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(self.dim0, self.dim1)

    def extra_repr(self) -> str:
        return f"dim0={self.dim0}, dim1={self.dim1}"


class Permute(Module):
    """Reorders dimensions."""

    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


class Squeeze(Module):
    """Removes dimension ``dim`` of size 1."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.squeeze(self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Unsqueeze(Module):
    """Inserts a dimension of size 1 at ``dim``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Slicing(Module):
    """``x[..., start:end:step, ...]`` along ``dim``."""

    def __init__(self, dim: int = 0, start: int = 0, end: int | None = None, step: int = 1) -> None:
        super().__init__()
        self.dim = dim
        self.start = start
        self.end = end
        self.step = step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index: list[slice] = [slice(None)] * x.dim()
        index[self.dim] = slice(self.start, self.end, self.step)
        return x[tuple(index)]

    def extra_repr(self) -> str:
        return f"dim={self.dim}, start={self.start}, end={self.end}, step={self.step}"


class Chunk(Module):
    """Splits ``x`` in ``chunks`` along ``dim``; returns a tuple."""

    def __init__(self, chunks: int, dim: int = 0) -> None:
        super().__init__()
        self.chunks = chunks
        self.dim = dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(x.chunk(self.chunks, dim=self.dim))

    def extra_repr(self) -> str:
        return f"chunks={self.chunks}, dim={self.dim}"


class Cat(Module):
    """Concatenates its inputs along ``dim``."""

    def __init__(self, dim: int = 0) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return torch.cat(tensors, dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Converter(Module):
    """Moves tensor inputs to a device and/or dtype (floating tensors only for the dtype)."""

    def __init__(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.device = device
        self.dtype = dtype

    def forward(self, *args: Any) -> Any:
        converted = tuple(
            arg.to(
                device=self.device,
                dtype=self.dtype if (self.dtype is not None and arg.is_floating_point()) else None,
            )
            if isinstance(arg, torch.Tensor)
            else arg
            for arg in args
        )
        return converted[0] if len(converted) == 1 else converted

    def extra_repr(self) -> str:
        return f"device={self.device}, dtype={self.dtype}"


class Dropout(Module):
    """Dropout with probability ``p`` while training; identity in eval mode."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
