"""The weight-delta contract every LoRA algorithm implements.

A delta changes one target layer's weight ``W`` (a Linear or a Conv2d) into ``W + delta_at(W, s)``
where ``s`` is the user's scale. Each algorithm (LoRA, LoHa, LoKr, DoRA, full diff, (IA)^3, OFT, BOFT,
GLoRA) is a small module behind :class:`WeightDelta`: it says what its delta is, how to apply it to
an input without touching ``W`` (the unfused "bypass" forward), how to fuse it into ``W`` and take
it back out, how to change its scale, and which tensors it saves under which file key names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

import refiners_core as rc
from refiners_lora.errors import LoraError

_FUSED_STATE = "_refiners_lora_fused"


def check_finite(name: str, value: float) -> float:
    """``value`` as a float, or a :class:`LoraError` naming ``name`` when it is NaN or infinite."""
    value = float(value)
    if not math.isfinite(value):
        raise LoraError(f"{name} is {value}: a LoRA scale or alpha must be a finite number")
    return value


class WeightDelta(rc.Module):
    """A change of one target layer's weight, at a user scale.

    Subclasses implement :meth:`delta` (the change at scale 1) and :meth:`state` (their tensors under
    the file's key suffixes); the rest has working defaults:

    - :meth:`delta_at` ``(W, s)``: the change at scale ``s``, ``s * delta(W)`` unless the algorithm is
      not linear in its scale (PEFT DoRA);
    - :meth:`forward`: the unfused (bypass) residual ``op(x, delta_at(W, s))`` with the target's
      geometry, plus a bias change when the algorithm has one;
    - :meth:`fuse` / :meth:`unfuse`: add the change to ``W`` in place and take exactly that tensor
      back out; an algorithm whose change does not read ``W``'s values (``reads_weight = False``) adds
      it with :meth:`add_to` and takes it back out at the opposite scale, keeping nothing full-size;
    - :meth:`rescale`: change ``s`` (a fused delta is unfused and fused again).

    The target is referenced, never registered as a child, so the delta's state dict holds only its
    own tensors.
    """

    algorithm: ClassVar[str] = "delta"
    # the layer types this algorithm changes
    target_types: ClassVar[tuple[type[nn.Module], ...]] = (nn.Linear, nn.Conv2d)
    # whether delta_at reads the values of the weight it is given (not only its shape)
    reads_weight: ClassVar[bool] = True

    def __init__(self, target: nn.Module | None = None, scale: float = 1.0) -> None:
        super().__init__()
        self.__dict__["_target"] = None
        if target is not None:
            self.bind(target)
        self.scale = check_finite("scale", scale)
        self.fused = False
        self.__dict__["_fused_weight"] = None
        self.__dict__["_fused_bias"] = None

    def bind(self, target: nn.Module) -> None:
        """Make ``target`` (a Linear or an ungrouped Conv2d; a norm layer for the norm algorithm) the layer
        this delta changes."""
        if not isinstance(target, self.target_types):
            kinds = " or ".join(kind.__name__ for kind in self.target_types)
            raise LoraError(f"{self.algorithm} targets must be {kinds} layers, not {type(target).__name__}")
        if isinstance(target, nn.Conv2d) and target.groups != 1:
            raise LoraError(f"LoRA of a grouped convolution (groups={target.groups}) is not supported")
        self.__dict__["_target"] = target
        for child in self.children():
            if isinstance(child, WeightDelta):
                child.bind(target)

    # ---- what subclasses provide -----------------------------------------------------------------

    @property
    def target(self) -> nn.Linear | nn.Conv2d:
        """The layer whose weight this delta changes."""
        target = self.__dict__.get("_target")
        if target is None:
            raise LoraError(f"this {self.algorithm} delta is not bound to a target layer yet")
        return target  # type: ignore[no-any-return]  # a norm layer for the norm algorithm

    @property
    def is_bound(self) -> bool:
        """Whether a target layer was given."""
        return self.__dict__.get("_target") is not None

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """Shape of the target's weight."""
        return tuple(self.target.weight.shape)

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        """The change of ``weight`` at scale 1 (file alpha / rank included), shaped like ``weight``."""
        raise NotImplementedError

    def bias_delta(self) -> torch.Tensor | None:
        """The change of the target's bias at scale 1, or ``None`` (most algorithms leave it alone)."""
        return None

    def state(self) -> dict[str, torch.Tensor]:
        """This delta's tensors under the key suffixes of the file it came from (``hada_w1_a``...)."""
        raise NotImplementedError

    @property
    def peft_only(self) -> bool:
        """Whether only PEFT's layout says exactly what this delta does (PEFT OFT and BOFT, PEFT DoRA
        scaling, PEFT LoKr scale); such a LoRA is saved in PEFT layout."""
        return False

    def peft_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """This delta as PEFT saves it: its tensors under PEFT key suffixes (``lora_A.weight``,
        ``oft_R.weight``...) and the fields of the PEFT config that describe its layer (``peft_type``,
        ``r``, ``lora_alpha`` or ``alpha``...); ``None`` when PEFT has no such adapter."""
        return None

    # ---- defaults --------------------------------------------------------------------------------

    def delta_at(self, weight: torch.Tensor, scale: float) -> torch.Tensor:
        """The change of ``weight`` at user scale ``scale``."""
        delta = self.delta(weight)
        return delta if scale == 1.0 else delta * scale

    @torch.no_grad()
    def add_to(self, weight: torch.Tensor, scale: float) -> None:
        """``weight += delta_at(weight, scale)`` in place (algorithms may avoid the full-size temporary)."""
        weight.add_(self.delta_at(weight, scale).to(weight.dtype))

    def register_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Register each of ``tensors`` as a parameter under its file key suffix, on the target's device and
        dtype."""
        like = self.target.weight
        for name, tensor in tensors.items():
            self.register_parameter(name, nn.Parameter(tensor.to(device=like.device, dtype=like.dtype)))

    def registered_tensors(self) -> dict[str, torch.Tensor]:
        """The parameters of :meth:`register_tensors`, detached, by key suffix."""
        return {name: parameter.detach() for name, parameter in self.named_parameters(recurse=False)}

    def _base_weight(self) -> torch.Tensor:
        return self.target.weight

    def op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """The target's operation (linear or convolution, same geometry) with another weight."""
        target = self.target
        if isinstance(target, nn.Linear):
            return F.linear(x, weight, bias)
        if target.padding_mode != "zeros":
            x = F.pad(x, target._reversed_padding_repeated_twice, mode=target.padding_mode)
            return F.conv2d(x, weight, bias, target.stride, 0, target.dilation)
        return F.conv2d(x, weight, bias, target.stride, target.padding, target.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The residual this delta adds to the target's output, unfused."""
        weight = self._base_weight()
        delta = self.delta_at(weight, self.scale).to(x.dtype)
        bias = self.bias_delta()
        return self.op(x, delta, None if bias is None else (bias * self.scale).to(x.dtype))

    def _fusing(self) -> None:
        # the first delta fused into a layer keeps its exact weights, so that unfusing the last one
        # gives them back bit for bit (float additions do not cancel exactly); in host memory, so that
        # fusing on an accelerator costs no device memory
        target = self.target
        state = target.__dict__.setdefault(_FUSED_STATE, {"count": 0, "weight": None, "bias": None})
        if state["count"] == 0:
            state["weight"] = target.weight.detach().to("cpu", copy=True)
            state["bias"] = None  # kept by the first delta that changes the bias (see fuse)
        state["count"] += 1

    @torch.no_grad()
    def _unfused(self) -> None:
        target = self.target
        state = target.__dict__.get(_FUSED_STATE)
        if state is None:
            return
        state["count"] -= 1
        if state["count"] == 0:
            target.weight.copy_(state["weight"])
            if state["bias"] is not None and target.bias is not None:
                target.bias.copy_(state["bias"])
            del target.__dict__[_FUSED_STATE]

    @torch.no_grad()
    def fuse(self) -> None:
        """Add the change at the current scale to the target's weight (and bias), in place."""
        if self.fused:
            return
        self._fusing()
        weight = self.target.weight
        if self.reads_weight:
            delta = self.delta_at(weight.float(), self.scale).to(weight.dtype)
            weight.add_(delta)
            self.__dict__["_fused_weight"] = delta
        else:
            self.add_to(weight, self.scale)
        bias = self.bias_delta()
        if bias is not None and self.target.bias is not None:
            state = self.target.__dict__[_FUSED_STATE]
            if state["bias"] is None:  # no delta fused so far changed it: still the original
                state["bias"] = self.target.bias.detach().to("cpu", copy=True)
            bias = (bias * self.scale).to(self.target.bias.dtype)
            self.target.bias.add_(bias)
            self.__dict__["_fused_bias"] = bias
        self.fused = True

    @torch.no_grad()
    def unfuse(self) -> None:
        """Take the fused change back out of the target's weight (and bias)."""
        if not self.fused:
            return
        state = self.target.__dict__.get(_FUSED_STATE)
        if state is None or state["count"] > 1:  # the last delta out restores the original weights instead
            if self.reads_weight:
                self.target.weight.sub_(self.__dict__["_fused_weight"])
            else:
                self.add_to(self.target.weight, -self.scale)
            if self.__dict__["_fused_bias"] is not None and self.target.bias is not None:
                self.target.bias.sub_(self.__dict__["_fused_bias"])
        self.__dict__["_fused_weight"] = self.__dict__["_fused_bias"] = None
        self.fused = False
        self._unfused()

    def rescale(self, scale: float) -> None:
        """Set the user scale (a fused delta is refused into the weight at the new scale)."""
        scale = check_finite("scale", scale)
        if self.fused:
            self.unfuse()
            self.scale = scale
            self.fuse()
        else:
            self.scale = scale

    @property
    def active(self) -> bool:
        """Whether the unfused forward contributes (not fused, scale not 0)."""
        return not self.fused and self.scale != 0

    def extra_repr(self) -> str:
        return f"{self.algorithm}, scale={self.scale:g}" + (", fused" if self.fused else "")


def scalar_alpha(key: str, alpha: torch.Tensor | float | None) -> float | None:
    """A file's ``alpha`` as a float, or a :class:`LoraError` naming ``key`` (not a scalar, NaN, inf)."""
    if alpha is None:
        return None
    if isinstance(alpha, torch.Tensor):
        if alpha.numel() != 1:
            raise LoraError(f"{key} must be a scalar, got a tensor of shape {tuple(alpha.shape)}")
        alpha = float(alpha.item())
    value = float(alpha)
    if not math.isfinite(value):
        raise LoraError(f"{key} is {value}: alpha must be a finite number")
    return value


def nonfinite_keys(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """The keys of ``tensors`` whose floating values include NaN or infinity, sorted.

    One float32 sum per tensor and one host sync per device: a sum is finite only when every value
    is (a NaN or an infinity makes it NaN or infinite). A tensor whose sum is not finite (bad values,
    or an overflow of large finite ones) is then checked value by value.
    """
    sums: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and tensor.numel():
            sums.setdefault(tensor.device, []).append((key, tensor.sum(dtype=torch.float32)))
    suspects = [
        key
        for pairs in sums.values()
        for (key, _), finite in zip(pairs, torch.stack([total for _, total in pairs]).isfinite().tolist(), strict=True)
        if not finite
    ]
    return sorted(key for key in suspects if not bool(tensors[key].isfinite().all()))


def check_tensors(tensors: Mapping[str, torch.Tensor]) -> None:
    """Raise a :class:`LoraError` naming every key whose tensor holds NaN or infinite values."""
    bad = nonfinite_keys(tensors)
    if bad:
        raise LoraError(f"NaN or infinite values in LoRA weights: {', '.join(sorted(bad))}")


def product_shape(left: torch.Tensor, right: torch.Tensor, what: str) -> tuple[int, int]:
    """The shape of ``left @ right.flatten(1)`` (a low-rank product), or a :class:`LoraError` naming ``what``.

    Checks shapes only: nothing is computed.
    """
    if left.dim() != 2 or right.dim() < 2 or left.shape[1] != right.shape[0]:
        raise LoraError(f"{what}: shapes {tuple(left.shape)} and {tuple(right.shape)} cannot be multiplied")
    return int(left.shape[0]), math.prod(right.shape[1:])


def cayley(skew: torch.Tensor) -> torch.Tensor:
    """The Cayley rotations ``(I - S)(I + S)^-1`` of a batch of skew-symmetric ``S``, ``(..., n, n)`` (a linear
    solve in float32, returned in ``skew``'s dtype); LyCORIS' ``(I + S)(I - S)^-1`` is that of ``-S``."""
    identity = torch.eye(skew.shape[-1], device=skew.device, dtype=torch.float32).expand_as(skew)
    skew32 = skew.float()
    return torch.linalg.solve(identity + skew32, identity - skew32, left=False).to(skew.dtype)


def tucker_product(core: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """A Tucker core ``(rank, rank, kh, kw)`` contracted with ``up`` ``(rank, out)`` and ``down`` ``(rank, in)``:
    ``(out, in, kh, kw)`` (LoHa ``hada_t*``, LoKr ``lokr_t2``)."""
    return torch.einsum("i j ..., i o, j c -> o c ...", core, up, down)


def tucker_shape(core: torch.Tensor, up: torch.Tensor, down: torch.Tensor, what: str) -> tuple[int, ...]:
    """The shape of a Tucker core ``(rank, rank, kh, kw)`` contracted with ``up`` ``(rank, out)`` and
    ``down`` ``(rank, in)``: ``(out, in, kh, kw)``, or a :class:`LoraError` naming ``what``."""
    if core.dim() < 2 or up.dim() != 2 or down.dim() != 2 or (up.shape[0], down.shape[0]) != tuple(core.shape[:2]):
        shapes = ", ".join(str(tuple(tensor.shape)) for tensor in (core, up, down))
        raise LoraError(f"{what}: a core, up and down of shapes {shapes} do not fit together")
    return (int(up.shape[1]), int(down.shape[1]), *core.shape[2:])


def check_fits(shape: tuple[int, ...], weight_shape: tuple[int, ...], what: str) -> None:
    """Raise a :class:`LoraError` when a delta of ``shape`` cannot be viewed as ``weight_shape``."""
    if math.prod(shape) != math.prod(weight_shape):
        raise LoraError(f"{what} of shape {tuple(shape)} does not fit a weight of shape {tuple(weight_shape)}")


# full-size temporaries are computed in row blocks of about this many elements: small blocks reuse
# the allocator's memory, where a fresh full-size tensor per layer costs its page faults
CHUNK_ELEMENTS = 1 << 22


def row_blocks(rows: int, row_elements: int) -> list[slice]:
    """Slices over ``rows`` rows of ``row_elements`` elements each, about :data:`CHUNK_ELEMENTS` per slice."""
    step = max(1, CHUNK_ELEMENTS // max(1, row_elements))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def reshape_to(tensor: torch.Tensor, shape: tuple[int, ...], what: str) -> torch.Tensor:
    """``tensor`` viewed as ``shape``, or a :class:`LoraError` saying ``what`` does not fit."""
    if tensor.numel() != math.prod(shape):
        raise LoraError(f"{what} of shape {tuple(tensor.shape)} does not fit a weight of shape {shape}")
    return tensor.reshape(shape)
