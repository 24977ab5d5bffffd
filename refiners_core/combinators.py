"""Chains with other data flows: parallel branches, sums, residuals, concatenation, side effects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from refiners_core.chain import Chain, Return, annotate_error
from refiners_core.module import Module

__all__ = [
    "Breakpoint",
    "Concatenate",
    "Distribute",
    "Lambda",
    "Parallel",
    "Passthrough",
    "Residual",
    "Return",
    "Sum",
]


class Parallel(Chain):
    """Feeds the same inputs to every child; returns the tuple of their outputs."""

    def forward(self, *args: Any) -> tuple[Any, ...]:
        outputs = []
        layer: nn.Module | None = None
        try:
            for layer in self._children.values():
                outputs.append(layer(*args))
        except Exception as error:
            if layer is not None:
                annotate_error(error, layer, args)
            raise
        return tuple(outputs)


class Distribute(Chain):
    """Feeds the i-th input to the i-th child; returns the tuple of their outputs."""

    def forward(self, *args: Any) -> tuple[Any, ...]:
        if len(args) != len(self._modules):
            raise ValueError(f"Distribute has {len(self._modules)} children but got {len(args)} inputs")
        outputs = []
        layer: nn.Module | None = None
        try:
            for layer, arg in zip(self._children.values(), args, strict=True):
                outputs.append(layer(arg))
        except Exception as error:
            if layer is not None:
                annotate_error(error, layer, args)
            raise
        return tuple(outputs)


class Sum(Chain):
    """Feeds the same inputs to every child; returns the sum of their outputs."""

    def forward(self, *args: Any) -> Any:
        result: Any = None
        layer: nn.Module | None = None
        try:
            for layer in self._children.values():
                output = layer(*args)
                result = output if result is None else result + output
        except Exception as error:
            if layer is not None:
                annotate_error(error, layer, args)
            raise
        return result


class Residual(Chain):
    """Runs its children in order, then adds the first input: ``x + f(x)``."""

    def forward(self, *args: Any) -> Any:
        return super().forward(*args) + args[0]


class Concatenate(Chain):
    """Feeds the same inputs to every child; concatenates their outputs along ``dim``."""

    def __init__(self, *modules: nn.Module, dim: int = 0) -> None:
        super().__init__(*modules)
        self.dim = dim

    def forward(self, *args: Any) -> torch.Tensor:
        outputs = Parallel.forward(self, *args)  # type: ignore[arg-type]
        return torch.cat([output for output in outputs if output is not None], dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Passthrough(Chain):
    """Runs its children for their side effects (e.g. ``SetContext``), then returns its inputs unchanged."""

    def forward(self, *args: Any) -> Any:
        super().forward(*args)
        return args[0] if len(args) == 1 else args


class Lambda(Module):
    """Wraps a plain callable as a layer."""

    def __init__(self, func: Callable[..., Any]) -> None:
        super().__init__()
        self.func = func

    def forward(self, *args: Any) -> Any:
        return self.func(*args)

    def extra_repr(self) -> str:
        return getattr(self.func, "__name__", repr(self.func))


class Breakpoint(Module):
    """Identity that drops into the debugger when ``active`` (for inspecting a data flow)."""

    def __init__(self, active: bool = True) -> None:
        super().__init__()
        self.active = active

    def forward(self, *args: Any) -> Any:
        if self.active:
            breakpoint()  # noqa: T100
        return args[0] if len(args) == 1 else args
