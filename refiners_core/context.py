"""Contexts: named stores shared down a tree, read and written by layers at run time."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from torch import nn

from refiners_core.errors import ContextError
from refiners_core.module import Module, get_parent, module_path

Context = dict[str, Any]
Contexts = dict[str, Context]


class ContextProvider:
    """Holds the contexts of one tree. The root Chain owns the provider every layer of the tree uses."""

    def __init__(self, contexts: Contexts | None = None) -> None:
        self.defaults: Contexts = {name: dict(values) for name, values in (contexts or {}).items()}
        # deep copies: a mutable default (a list of residuals, say) must not be shared with live values
        self.contexts: Contexts = copy.deepcopy(self.defaults)

    def declare(self, other: ContextProvider) -> None:
        """Adopt the contexts declared by ``other`` (a subtree joining this tree); values already set win."""
        for name, values in other.defaults.items():
            self.defaults.setdefault(name, copy.deepcopy(values))
        for name, values in other.contexts.items():
            target = self.contexts.setdefault(name, {})
            for key, value in values.items():
                target.setdefault(key, value)

    def set_context(self, name: str, values: Context) -> None:
        """Set keys of context ``name`` (other keys keep their values); declares the context if new."""
        self.contexts.setdefault(name, {}).update(values)

    def reset_context(self, name: str | None = None) -> None:
        """Restore context ``name`` (every context when ``None``) to its declared defaults."""
        names = list(self.contexts) if name is None else [name]
        for context in names:
            self.contexts[context] = copy.deepcopy(self.defaults.get(context, {}))

    def get_context(self, name: str) -> Context:
        """The dict of context ``name``; :class:`ContextError` if it was never declared nor set."""
        try:
            return self.contexts[name]
        except KeyError:
            known = ", ".join(sorted(self.contexts)) or "none"
            raise ContextError(f"context {name!r} is not declared in this tree (declared: {known})") from None

    def copy(self) -> ContextProvider:
        """A provider with the same defaults and values (shallow copies of each context)."""
        clone = ContextProvider(self.defaults)
        clone.contexts = {name: dict(values) for name, values in self.contexts.items()}
        return clone


def root_of(module: nn.Module) -> nn.Module:
    """The topmost ancestor of ``module`` (itself when it has no parent)."""
    current = module
    parent = get_parent(current)
    while parent is not None:
        current, parent = parent, get_parent(parent)
    return current


def provider_of(module: nn.Module) -> ContextProvider:
    """The context provider of the tree ``module`` lives in."""
    root = root_of(module)
    provider = root.__dict__.get("_provider")
    if provider is None:
        raise ContextError(
            f"{module_path(module)} is not inside a Chain: contexts are only available within a Chain tree"
        )
    return provider


class ContextModule(Module):
    """A leaf that reads or writes a context of its tree."""

    def __init__(self, context: str, key: str) -> None:
        super().__init__()
        self.context = context
        self.key = key

    def read(self) -> Any:
        """The current value of ``context[key]``; :class:`ContextError` names both when unset."""
        values = provider_of(self).get_context(self.context)
        try:
            return values[self.key]
        except KeyError:
            raise ContextError(
                f"context {self.context!r} has no value for key {self.key!r} "
                f"(read by {module_path(self)}); set it with set_context({self.context!r}, {{{self.key!r}: ...}})"
            ) from None

    def extra_repr(self) -> str:
        return f"context={self.context!r}, key={self.key!r}"


class UseContext(ContextModule):
    """Ignores its inputs and returns ``context[key]``: how side inputs enter a data flow."""

    def forward(self, *args: Any) -> Any:
        return self.read()


class SetContext(ContextModule):
    """Stores its first input in ``context[key]`` (or calls ``callback(current_value, *inputs)``); returns inputs."""

    def __init__(self, context: str, key: str, callback: Callable[..., Any] | None = None) -> None:
        super().__init__(context, key)
        self.callback = callback

    def forward(self, *args: Any) -> Any:
        values = provider_of(self).get_context(self.context)
        if self.callback is None:
            values[self.key] = args[0]
        else:
            self.callback(self.read(), *args)
        return args[0] if len(args) == 1 else args
