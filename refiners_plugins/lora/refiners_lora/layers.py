"""LoRA layers: ``scale * alpha / rank * up(down(x))`` for a Linear or a Conv2d target (LoCon, and
LoCon with a Tucker core ``lora_mid``): the ``lora`` algorithm of the weight-delta contract."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

import refiners_core as rc
from refiners_lora.deltas.base import WeightDelta, check_finite
from refiners_lora.errors import LoraError
from refiners_lora.writers import lora_config_fields


def _parameter(tensor: torch.Tensor, like: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor.to(device=like.device, dtype=like.dtype))


class Lora(rc.Chain, WeightDelta):
    """A low-rank residual: ``down`` then ``up`` (through a Tucker core ``mid`` when given), scaled by
    ``scale * alpha / rank``.

    ``scale`` is the user's knob (0 disables the LoRA exactly); ``alpha`` comes from the file
    (``alpha = rank`` when the file gives none). A fused LoRA lives in its target's weight and is
    skipped by :class:`~refiners_lora.adapter.LoraAdapter`.
    """

    algorithm = "lora"

    def __init__(
        self,
        down: nn.Module,
        up: nn.Module,
        rank: int,
        alpha: float | None = None,
        scale: float = 1.0,
        mid: nn.Module | None = None,
    ):
        if mid is None:
            super().__init__(down=down, up=up)
        else:
            super().__init__(down=down, mid=mid, up=up)
        if rank <= 0:
            raise LoraError(f"LoRA rank must be positive, got {rank}")
        self.rank = rank
        self.alpha = check_finite("alpha", rank if alpha is None else alpha)
        self.scale = check_finite("scale", scale)
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

    @property
    def mid(self) -> nn.Module | None:
        """The Tucker core (LoCon ``lora_mid``), or ``None``."""
        return self._children.get("mid")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.down(x)
        if self.mid is not None:
            hidden = self.mid(hidden)
        scale = self.effective_scale
        residual = self.up(hidden)
        # A factor of 1 (alpha = rank, the default) is exact: skip its multiply and its backward node.
        return residual if scale == 1.0 else residual * scale

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        """``alpha / rank * up @ (mid) @ down`` shaped like ``weight``."""
        down, up = self._weights()
        up = up.flatten(1) * (self.alpha / self.rank)  # the factor on the small matrix, not the product
        if self.mid is not None:
            mid = self.mid.weight
            assert isinstance(mid, torch.Tensor)
            product = torch.einsum("o i, i j ..., j c -> o c ...", up, mid, down.flatten(1))
            return product.reshape(weight.shape).to(weight.dtype)
        return (up @ down.flatten(1)).reshape(weight.shape).to(weight.dtype)

    def state(self) -> dict[str, torch.Tensor]:
        """``lora_down.weight``, ``lora_up.weight`` (``lora_mid.weight``) and ``alpha``, kohya key suffixes."""
        down, up = self._weights()
        state = {"lora_down.weight": down.detach(), "lora_up.weight": up.detach()}
        if self.mid is not None:
            mid = self.mid.weight
            assert isinstance(mid, torch.Tensor)
            state["lora_mid.weight"] = mid.detach()
        state["alpha"] = torch.tensor(self.alpha)
        return state

    def peft_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """``lora_A.weight`` / ``lora_B.weight`` with ``r`` and ``lora_alpha`` (``None`` with a Tucker core)."""
        if self.mid is not None:
            return None
        down, up = self._weights()
        tensors = {"lora_A.weight": down.detach(), "lora_B.weight": up.detach()}
        return tensors, lora_config_fields(self.rank, self.alpha)

    @torch.no_grad()
    def fuse(self) -> None:
        """Add ``effective_scale * up @ down`` to the target's weight in place (no temporary delta tensor)."""
        if self.fused:
            return
        if self.mid is not None:
            WeightDelta.fuse(self)
            return
        self._fusing()
        self.add_delta_to(self.target.weight, self.effective_scale)
        self.fused = True

    @torch.no_grad()
    def unfuse(self) -> None:
        """Take the fused LoRA back out of the target's weight (bit-exact once no LoRA is fused in it)."""
        if not self.fused:
            return
        if self.mid is not None:
            WeightDelta.unfuse(self)
            return
        self.add_delta_to(self.target.weight, -self.effective_scale)
        self.fused = False
        self._unfused()

    def rescale(self, scale: float) -> None:
        """Set the user scale; a fused LoRA's target weight is updated by the difference."""
        scale = check_finite("scale", scale)
        if self.fused and self.mid is None:
            self.add_delta_to(self.target.weight, (scale - self.scale) * self.alpha / self.rank)
            self.scale = scale
        else:
            WeightDelta.rescale(self, scale)

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
        lora.bind(target)
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
        lora.bind(target)
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
        lora.bind(target)
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
        lora.bind(target)
        return lora


class TuckerConv2dLora(Lora):
    """LoCon with a Tucker core: ``down`` a 1x1 convolution to ``rank`` channels, ``mid`` a
    ``rank -> rank`` convolution with the target's kernel, stride, padding and dilation, ``up`` a 1x1
    convolution back (LyCORIS ``lora_mid``)."""

    @classmethod
    def from_weights(
        cls,
        target: nn.Conv2d,
        down: torch.Tensor,
        mid: torch.Tensor,
        up: torch.Tensor,
        alpha: float | None = None,
        scale: float = 1.0,
    ) -> TuckerConv2dLora:
        """A Tucker LoCon for ``target``: ``down`` ``(rank, in, 1, 1)``, ``mid`` ``(rank, rank, kh, kw)``,
        ``up`` ``(out, rank, 1, 1)``."""
        rank = int(down.shape[0])
        kernel = tuple(target.kernel_size)
        down = down.reshape(rank, -1)[:, :, None, None] if down.dim() == 2 else down
        up = up.reshape(up.shape[0], -1)[:, :, None, None] if up.dim() == 2 else up
        expected = ((rank, target.in_channels, 1, 1), (rank, rank, *kernel), (target.out_channels, rank, 1, 1))
        if (tuple(down.shape), tuple(mid.shape), tuple(up.shape)) != expected:
            raise LoraError(
                f"LoCon shapes down {tuple(down.shape)}, mid {tuple(mid.shape)}, up {tuple(up.shape)} do not fit"
                f" Conv2d({target.in_channels}, {target.out_channels}, kernel {kernel}): expected {expected}"
            )
        geometry = Conv2dLora._geometry(target)
        down_layer = rc.Conv2d(target.in_channels, rank, 1, bias=False, device="meta")
        mid_layer = rc.Conv2d(rank, rank, bias=False, device="meta", **geometry)  # type: ignore[arg-type]
        up_layer = rc.Conv2d(rank, target.out_channels, 1, bias=False, device="meta")
        for layer, tensor in ((down_layer, down), (mid_layer, mid), (up_layer, up)):
            layer.weight = _parameter(tensor, target.weight)
        lora = cls(down_layer, up_layer, rank, alpha, scale, mid=mid_layer)
        lora.bind(target)
        return lora


def lora_from_weights(
    target: nn.Module,
    down: torch.Tensor,
    up: torch.Tensor,
    alpha: float | None = None,
    scale: float = 1.0,
    mid: torch.Tensor | None = None,
) -> Lora:
    """A :class:`LinearLora`, :class:`Conv2dLora` or (with ``mid``) :class:`TuckerConv2dLora` fitting
    ``target`` (a torch Linear or Conv2d)."""
    if down.dim() == 0 or down.shape[0] == 0:
        raise LoraError(f"LoRA rank must be positive, got lora_down of shape {tuple(down.shape)}")
    if mid is not None:
        if not isinstance(target, nn.Conv2d):
            raise LoraError(f"a LoCon Tucker core (lora_mid) needs a Conv2d target, not {type(target).__name__}")
        return TuckerConv2dLora.from_weights(target, down, mid, up, alpha, scale)
    if isinstance(target, nn.Linear):
        return LinearLora.from_weights(target, down, up, alpha, scale)
    if isinstance(target, nn.Conv2d):
        return Conv2dLora.from_weights(target, down, up, alpha, scale)
    raise LoraError(f"LoRA targets must be Linear or Conv2d layers, not {type(target).__name__}")
