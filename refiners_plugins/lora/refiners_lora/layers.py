"""LoRA layers: ``scale * alpha / rank * up(down(x))`` for a Linear or a Conv2d target (LoCon)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

import refiners_core as rc
from refiners_lora.errors import LoraError


def _parameter(tensor: torch.Tensor, like: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor.to(device=like.device, dtype=like.dtype))


class Lora(rc.Chain):
    """A low-rank residual: ``down`` then ``up``, scaled by ``scale * alpha / rank``.

    ``scale`` is the user's knob (0 disables the LoRA exactly); ``alpha`` comes from the file
    (``alpha = rank`` when the file gives none). A fused LoRA lives in its target's weight and is
    skipped by :class:`~refiners_lora.adapter.LoraAdapter`.
    """

    def __init__(self, down: nn.Module, up: nn.Module, rank: int, alpha: float | None = None, scale: float = 1.0):
        super().__init__(down=down, up=up)
        self.rank = rank
        self.alpha = float(rank if alpha is None else alpha)
        self.scale = float(scale)
        self.fused = False

    @property
    def down(self) -> nn.Module:
        """The projection to ``rank`` dimensions."""
        return self._children["down"]

    @property
    def up(self) -> nn.Module:
        """The projection back to the target's output size."""
        return self._children["up"]

    @property
    def effective_scale(self) -> float:
        """``scale * alpha / rank``: the factor applied to ``up(down(x))``."""
        return self.scale * self.alpha / self.rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.effective_scale
        residual = self.up(self.down(x))
        # A factor of 1 (alpha = rank, the default) is exact: skip its multiply and its backward node.
        return residual if scale == 1.0 else residual * scale

    def _weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(down.weight, up.weight)``: both projections are weighted layers (Linear or Conv2d)."""
        down, up = self.down.weight, self.up.weight
        assert isinstance(down, torch.Tensor) and isinstance(up, torch.Tensor)
        return down, up

    @torch.no_grad()
    def add_delta_to(self, weight: torch.Tensor, factor: float) -> None:
        """``weight += factor * up @ down`` in place, in ``weight``'s dtype (no temporary delta tensor)."""
        down, up = self._weights()
        out_features = weight.shape[0]
        weight.view(out_features, -1).addmm_(
            up.reshape(out_features, self.rank).to(weight.dtype),
            down.reshape(self.rank, -1).to(weight.dtype),
            alpha=factor,
        )

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}, scale={self.scale:g}" + (", fused" if self.fused else "")


class LinearLora(Lora):
    """LoRA of a Linear layer: ``down`` is ``Linear(in, rank)``, ``up`` is ``Linear(rank, out)``, no biases."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        alpha: float | None = None,
        scale: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        down = rc.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        up = rc.Linear(rank, out_features, bias=False, device=device, dtype=dtype)
        super().__init__(down, up, rank, alpha, scale)

    @classmethod
    def for_target(cls, target: nn.Linear, rank: int, alpha: float | None = None, scale: float = 1.0) -> LinearLora:
        """A fresh LoRA for ``target`` on its device and dtype: ``down`` initialised, ``up`` zero (no effect yet)."""
        lora = cls(
            target.in_features, target.out_features, rank, alpha, scale, target.weight.device, target.weight.dtype
        )
        nn.init.zeros_(lora.up.weight)  # type: ignore[arg-type]
        return lora

    @classmethod
    def from_weights(
        cls,
        target: nn.Linear,
        down: torch.Tensor,
        up: torch.Tensor,
        alpha: float | None = None,
        scale: float = 1.0,
    ) -> LinearLora:
        """A LoRA for ``target`` holding ``down`` ``(rank, in)`` and ``up`` ``(out, rank)``.

        ``(.., 1, 1)`` kernels (1x1 convolutions) are accepted and flattened. The weights are built on
        the target's device and dtype directly (no initialisation, no intermediate copy).
        """
        rank = int(down.shape[0])
        down, up = down.reshape(rank, -1), up.reshape(up.shape[0], -1)
        expected = ((rank, target.in_features), (target.out_features, rank))
        if (tuple(down.shape), tuple(up.shape)) != expected:
            raise LoraError(
                f"LoRA shapes down {tuple(down.shape)}, up {tuple(up.shape)} do not fit Linear"
                f"({target.in_features}, {target.out_features}): expected {expected[0]} and {expected[1]}"
            )
        lora = cls(target.in_features, target.out_features, rank, alpha, scale, device="meta")
        lora.down.weight = _parameter(down, target.weight)  # type: ignore[union-attr]
        lora.up.weight = _parameter(up, target.weight)  # type: ignore[union-attr]
        return lora


class Conv2dLora(Lora):
    """LoRA of a Conv2d layer (LoCon): ``down`` has the target's kernel, stride, padding and dilation,
    ``up`` is a 1x1 convolution; no biases."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        rank: int,
        kernel_size: tuple[int, int] = (1, 1),
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] | str = (0, 0),
        dilation: tuple[int, int] = (1, 1),
        padding_mode: Literal["zeros", "reflect", "replicate", "circular"] = "zeros",
        alpha: float | None = None,
        scale: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        down = rc.Conv2d(
            in_channels,
            rank,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            padding_mode=padding_mode,
            bias=False,
            device=device,
            dtype=dtype,
        )
        up = rc.Conv2d(rank, out_channels, 1, bias=False, device=device, dtype=dtype)
        super().__init__(down, up, rank, alpha, scale)

    @staticmethod
    def _geometry(target: nn.Conv2d) -> dict[str, object]:
        if target.groups != 1:
            raise LoraError(f"LoRA of a grouped convolution (groups={target.groups}) is not supported")
        return {
            "kernel_size": target.kernel_size,
            "stride": target.stride,
            "padding": target.padding,
            "dilation": target.dilation,
            "padding_mode": target.padding_mode,
        }

    @classmethod
    def for_target(cls, target: nn.Conv2d, rank: int, alpha: float | None = None, scale: float = 1.0) -> Conv2dLora:
        """A fresh LoCon for ``target`` on its device and dtype: ``down`` initialised, ``up`` zero."""
        lora = cls(
            target.in_channels,
            target.out_channels,
            rank,
            alpha=alpha,
            scale=scale,
            device=target.weight.device,
            dtype=target.weight.dtype,
            **cls._geometry(target),  # type: ignore[arg-type]
        )
        nn.init.zeros_(lora.up.weight)  # type: ignore[arg-type]
        return lora

    @classmethod
    def from_weights(
        cls,
        target: nn.Conv2d,
        down: torch.Tensor,
        up: torch.Tensor,
        alpha: float | None = None,
        scale: float = 1.0,
    ) -> Conv2dLora:
        """A LoCon for ``target`` holding ``down`` ``(rank, in, kh, kw)`` and ``up`` ``(out, rank, 1, 1)``.

        2D weights are accepted for 1x1 targets. Built on the target's device and dtype directly.
        """
        rank = int(down.shape[0])
        kernel = tuple(target.kernel_size)
        if down.dim() == 2 and kernel == (1, 1):
            down = down[:, :, None, None]
        if up.dim() == 2:
            up = up[:, :, None, None]
        expected = ((rank, target.in_channels, *kernel), (target.out_channels, rank, 1, 1))
        if (tuple(down.shape), tuple(up.shape)) != expected:
            raise LoraError(
                f"LoRA shapes down {tuple(down.shape)}, up {tuple(up.shape)} do not fit Conv2d"
                f"({target.in_channels}, {target.out_channels}, kernel {kernel}): "
                f"expected {expected[0]} and {expected[1]}"
            )
        lora = cls(
            target.in_channels,
            target.out_channels,
            rank,
            alpha=alpha,
            scale=scale,
            device="meta",
            **cls._geometry(target),  # type: ignore[arg-type]
        )
        lora.down.weight = _parameter(down, target.weight)  # type: ignore[union-attr]
        lora.up.weight = _parameter(up, target.weight)  # type: ignore[union-attr]
        return lora


def lora_from_weights(
    target: nn.Module, down: torch.Tensor, up: torch.Tensor, alpha: float | None = None, scale: float = 1.0
) -> Lora:
    """A :class:`LinearLora` or :class:`Conv2dLora` fitting ``target`` (a torch Linear or Conv2d)."""
    if isinstance(target, nn.Linear):
        return LinearLora.from_weights(target, down, up, alpha, scale)
    if isinstance(target, nn.Conv2d):
        return Conv2dLora.from_weights(target, down, up, alpha, scale)
    raise LoraError(f"LoRA targets must be Linear or Conv2d layers, not {type(target).__name__}")
