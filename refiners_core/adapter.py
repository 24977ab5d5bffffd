"""Adapters: Chains that take the place of a target layer, and give it back exactly on eject."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

from torch import nn

from refiners_core.chain import Chain
from refiners_core.errors import AdapterError
from refiners_core.module import get_parent, module_path, set_parent

T = TypeVar("T", bound=nn.Module)


class Adapter(Generic[T]):
    """Mixin for a Chain that wraps a ``target`` layer and can be injected in its place.

    Usage::

        class ScaledLinear(rc.Chain, rc.Adapter[rc.Linear]):
            def __init__(self, target: rc.Linear, scale: float) -> None:
                with self.setup_adapter(target):
                    super().__init__(target, rc.Multiply(scale))

    ``inject()`` replaces the target in its parent (same child name); ``eject()`` puts back whatever
    now occupies the target's slot inside the adapter (the target, or another adapter stacked on it),
    so adapters stack and eject in any order, leaving the exact original objects and keys.
    """

    @contextmanager
    def setup_adapter(self, target: T) -> Iterator[None]:
        """Wrap the Chain constructor: records the target and keeps it in its original parent until ``inject``."""
        if not isinstance(self, Chain):
            raise AdapterError(f"{type(self).__name__} must also derive from Chain to be an Adapter")
        original_parent = get_parent(target)
        yield
        container, key = self._locate(target)
        self.__dict__["_adapter_target"] = target
        self.__dict__["_adapter_slot"] = (container, key)
        set_parent(target, original_parent)

    def _locate(self, target: nn.Module) -> tuple[Chain, str]:
        assert isinstance(self, Chain)
        for module in [self, *(child for child, _ in self.walk())]:
            if isinstance(module, Chain):
                for key, child in module._children.items():
                    if child is target:
                        return module, key
        raise AdapterError(f"{type(self).__name__}: the target must be a descendant of the adapter after __init__")

    @property
    def target(self) -> T:
        """The layer this adapter wraps."""
        try:
            return self.__dict__["_adapter_target"]
        except KeyError:
            raise AdapterError(f"{type(self).__name__}.__init__ must use `with self.setup_adapter(target):`") from None

    @property
    def is_injected(self) -> bool:
        """Whether the adapter currently sits in a tree in place of its target."""
        return get_parent(self) is not None  # type: ignore[arg-type]

    def _slot(self) -> tuple[Chain, str]:
        self.target  # noqa: B018 - raises a clear error if setup_adapter was not used
        return self.__dict__["_adapter_slot"]

    def inject(self, parent: Chain | None = None) -> Any:
        """Put the adapter in place of its target inside ``parent`` (default: the target's current parent).

        Returns the adapter. Raises :class:`AdapterError` if the target is not a child of ``parent``.
        """
        assert isinstance(self, Chain)
        target = self.target
        if self.is_injected:
            raise AdapterError(f"{type(self).__name__} is already injected at {module_path(self)}")
        parent = parent if parent is not None else get_parent(target)
        if parent is None:
            raise AdapterError(
                f"cannot inject {type(self).__name__}: its target {type(target).__name__} is not inside a Chain"
            )
        if not any(child is target for child in parent._children.values()):
            raise AdapterError(
                f"cannot inject {type(self).__name__}: {type(target).__name__} is not a child of {module_path(parent)}"
            )
        container, key = self._slot()
        container._modules[key] = target
        parent.replace(target, self)
        set_parent(target, container)
        return self

    def eject(self) -> None:
        """Remove the adapter: its slot's occupant (the target, or an adapter stacked on it) goes back in its place."""
        assert isinstance(self, Chain)
        parent = get_parent(self)
        if parent is None:
            raise AdapterError(f"{type(self).__name__} is not injected")
        container, key = self._slot()
        occupant = container._children[key]
        parent.replace(self, occupant)
        container._modules[key] = self.target  # the ejected adapter holds its target again, ready to re-inject


def inject_adapters(adapters: Sequence[Adapter[Any]] | Iterable[Adapter[Any]]) -> list[Adapter[Any]]:
    """Inject adapters in order, all or nothing.

    If one fails, those already injected are ejected (in reverse order) and the error is re-raised,
    leaving the model exactly as before.
    """
    injected: list[Adapter[Any]] = []
    try:
        for adapter in adapters:
            adapter.inject()
            injected.append(adapter)
    except BaseException:
        for adapter in reversed(injected):
            adapter.eject()
        raise
    return injected


def eject_adapters(adapters: Iterable[Adapter[Any]]) -> None:
    """Eject adapters in the given order (any order is valid)."""
    for adapter in adapters:
        adapter.eject()


def unwrap_adapters(module: Any) -> Any:
    """The layer under any adapters injected on ``module`` (``module`` itself when it is no adapter).

    Follows ``target`` through stacked adapters down to the original layer.
    """
    while isinstance(module, Adapter):
        module = module.target
    return module
