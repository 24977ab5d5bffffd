"""A named group of adapters acting as one: injected all or nothing, one scale, removed together."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from refiners_core.adapter import Adapter, eject_adapters, inject_adapters
from refiners_core.errors import AdapterError

__all__ = ["AdapterGroup"]


class AdapterGroup:
    """Several adapters on several targets that form one logical adapter (a T2I-Adapter's feature
    injections, an IP-Adapter's image cross-attentions, ...).

    ``inject()`` injects every member or none; ``scale`` sets the strength of every member through
    ``set_member_scale`` (default: the member's own ``scale`` attribute); ``remove()`` ejects them all.
    Follows :class:`refiners_core.contracts.LoadedAdapter`.

    Args:
        name: a name for messages and lookups.
        adapters: the members, in injection order.
        scale: the initial strength, applied to every member at construction.
        set_member_scale: how to apply a scale to one member (default: ``member.scale = value``).
    """

    def __init__(
        self,
        name: str,
        adapters: Sequence[Adapter[Any]],
        *,
        scale: float = 1.0,
        set_member_scale: Callable[[Adapter[Any], float], None] | None = None,
    ) -> None:
        if not adapters:
            raise AdapterError(f"adapter group {name!r} has no adapters")
        self.name = name
        self.adapters: tuple[Adapter[Any], ...] = tuple(adapters)
        self._set_member_scale = set_member_scale or _set_scale_attribute
        self._scale = float(scale)
        for adapter in self.adapters:
            self._set_member_scale(adapter, self._scale)

    @property
    def scale(self) -> float:
        """The strength shared by every member."""
        return self._scale

    @scale.setter
    def scale(self, value: float) -> None:
        for adapter in self.adapters:
            self._set_member_scale(adapter, float(value))
        self._scale = float(value)

    @property
    def is_injected(self) -> bool:
        """Whether the members are in the model (all of them are, or none)."""
        return self.adapters[0].is_injected

    def inject(self) -> AdapterGroup:
        """Inject every member, all or nothing (on error the model is left as it was); returns the group."""
        if self.is_injected:
            raise AdapterError(f"adapter group {self.name!r} is already injected")
        inject_adapters(self.adapters)
        return self

    def remove(self) -> None:
        """Eject every member (last first), giving the model back exactly as before :meth:`inject`."""
        if not self.is_injected:
            raise AdapterError(f"adapter group {self.name!r} is not injected")
        eject_adapters(reversed(self.adapters))

    def __len__(self) -> int:
        return len(self.adapters)

    def __repr__(self) -> str:
        state = "injected" if self.is_injected else "not injected"
        return f"{type(self).__name__}({self.name!r}, {len(self)} adapters, scale={self._scale:g}, {state})"


def _set_scale_attribute(adapter: Adapter[Any], value: float) -> None:
    adapter.scale = value  # type: ignore[attr-defined]
