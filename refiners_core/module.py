"""Base classes of every layer: modules that know the Chain they live in."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from refiners_core.chain import Chain

_PARENT = "_refiners_parent"


def get_parent(module: nn.Module) -> Chain | None:
    """Return the Chain holding ``module``, or ``None``. Works for any ``torch.nn.Module``."""
    ref = module.__dict__.get(_PARENT)
    return None if ref is None else ref()


def set_parent(module: nn.Module, parent: Chain | None) -> None:
    """Record ``parent`` as the Chain holding ``module`` (a weak reference: no cycle, no deepcopy of the tree)."""
    # Stored in __dict__ directly so that nn.Module does not register the parent as a submodule.
    module.__dict__[_PARENT] = None if parent is None else weakref.ref(parent)


def module_path(module: nn.Module) -> str:
    """The dotted path of ``module`` from the root of its tree (``"SD1UNet.DownBlocks.Chain_1"``)."""
    names: list[str] = []
    current = module
    parent = get_parent(current)
    while parent is not None:
        names.append(parent.name_of(current))
        current, parent = parent, get_parent(parent)
    names.append(type(current).__name__)
    return ".".join(reversed(names))


class Module(nn.Module):
    """A ``torch.nn.Module`` that knows its parent Chain (``parent``) and its path in the tree."""

    @property
    def parent(self) -> Chain | None:
        """The Chain this module is a child of, or ``None`` for a root."""
        return get_parent(self)

    @property
    def path(self) -> str:
        """The dotted path of this module from the root of its tree."""
        return module_path(self)

    def structural_copy(self) -> Module:
        """Leaves are shared by structural copies: return ``self``."""
        return self

    def load_weights(
        self, weights: Any, strict: bool = True, device: Any = None, dtype: torch.dtype | None = None
    ) -> tuple[list[str], list[str]]:
        """Load a state dict or a safetensors file into this module, matching keys by name.

        Every key is accounted for: with ``strict`` (default), missing or unexpected keys and shape
        mismatches raise :class:`~refiners_core.errors.WeightsError` listing them, and nothing is loaded.
        Returns ``(missing, unexpected)`` key lists (empty when strict).
        """
        from refiners_core.weights import load_weights_into

        return load_weights_into(self, weights, strict=strict, device=device, dtype=dtype)


class SkipInitOnMeta:
    """Mixin for leaves wrapping a torch layer: on the ``meta`` device ``reset_parameters`` does nothing.

    There is no data to initialise there, and torch's random initialisers on meta tensors go through slow
    decompositions (a third of a full-size ControlNet build). Weights of a meta-built model are assigned
    when loaded; ``to_empty`` never initialises anyway.
    """

    def reset_parameters(self) -> None:
        """Initialise the weights as the torch layer does, except on the meta device."""
        weight = getattr(self, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.is_meta:
            return
        super().reset_parameters()  # type: ignore[misc]


class WeightedModule(Module):
    """A leaf module holding parameters; exposes ``device`` and ``dtype`` of its weights."""

    @property
    def device(self) -> torch.device:
        """Device of the first parameter."""
        return next(iter(self.parameters())).device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the first parameter."""
        return next(iter(self.parameters())).dtype
