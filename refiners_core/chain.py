"""Chain: a model as a tree of layers run in order, with fluent, name-stable editing."""

from __future__ import annotations

import copy
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar, overload

import torch
from torch import nn

from refiners_core.context import Context, ContextProvider, Contexts, provider_of
from refiners_core.errors import ChainError
from refiners_core.module import Module, get_parent, module_path, set_parent
from refiners_core.tree_repr import tree_repr

T = TypeVar("T", bound=nn.Module)
Predicate = Callable[[nn.Module, "Chain"], bool]

_SUFFIX = re.compile(r"^(.*)_(\d+)$")


def _describe_inputs(args: Any) -> str:
    items = args if isinstance(args, tuple) else (args,)
    parts = []
    for item in items:
        if isinstance(item, torch.Tensor):
            parts.append(f"Tensor{tuple(item.shape)}:{str(item.dtype).removeprefix('torch.')}")
        else:
            parts.append(type(item).__name__)
    return "(" + ", ".join(parts) + ")"


def annotate_error(error: BaseException, layer: nn.Module, inputs: Any) -> None:
    """Add the failing layer's path and input shapes to ``error``'s message, once (innermost layer wins).

    The exception keeps its type, so callers still catch ``KeyError``, ``RuntimeError``... as usual.
    """
    if getattr(error, "_refiners_annotated", False):
        return
    where = f"in layer {module_path(layer)} ({type(layer).__name__}) with inputs {_describe_inputs(inputs)}"
    try:
        error._refiners_annotated = True  # type: ignore[attr-defined]
    except AttributeError:  # exceptions with __slots__: annotate through a note only
        pass
    if error.args and isinstance(error.args[0], str) and not isinstance(error, OSError):
        error.args = (f"{error.args[0]}\n  {where}", *error.args[1:])
    else:
        error.add_note(where)


class Chain(Module):
    """Runs its children in order: each child's output feeds the next (plain tuples are unpacked).

    Children are named after their class (``Linear``, or ``Linear_1``, ``Linear_2``... when several
    share a class); names can also be given as keywords. Editing (``insert``, ``remove``, ``replace``...)
    never renames siblings, so state-dict keys of untouched layers stay stable.
    """

    def __init__(self, *layers: nn.Module | Iterable[nn.Module], **named_layers: nn.Module) -> None:
        super().__init__()
        self.__dict__["_provider"] = ContextProvider(self.init_context())
        modules: list[nn.Module] = []
        for item in layers:
            if isinstance(item, nn.Module):
                modules.append(item)
            else:
                modules.extend(item)
        counts: dict[str, int] = {}
        for module in modules:
            counts[type(module).__name__] = counts.get(type(module).__name__, 0) + 1
        seen: dict[str, int] = {}
        for module in modules:
            base = type(module).__name__
            if counts[base] == 1:
                name = base
            else:
                seen[base] = seen.get(base, 0) + 1
                name = f"{base}_{seen[base]}"
            self._attach(name, module)
        for name, module in named_layers.items():
            if name in self._modules:
                raise ChainError(f"duplicate child name {name!r} in {type(self).__name__}")
            self._attach(name, module)

    # ---- running -------------------------------------------------------------------------------

    def forward(self, *args: Any) -> Any:
        result: Any = args
        layer: nn.Module | None = None
        try:
            for layer in self._children.values():
                result = layer(*result) if type(result) is tuple else layer(result)
        except EarlyReturn as signal:
            if type(layer) is not Return:  # a Return further down, not a direct child: not ours to catch
                raise
            result = signal.value
        except Exception as error:
            if layer is not None:
                annotate_error(error, layer, result)
            raise
        if type(result) is tuple and len(result) == 1:
            return result[0]
        return result

    # ---- contexts ------------------------------------------------------------------------------

    def init_context(self) -> Contexts:
        """Declare the contexts this Chain needs (override in subclasses); ``{}`` by default."""
        return {}

    @property
    def provider(self) -> ContextProvider:
        """The context provider of the whole tree (owned by the root)."""
        return provider_of(self)

    def set_context(self, name: str, values: Context) -> None:
        """Set keys of context ``name`` for the whole tree this Chain belongs to."""
        self.provider.set_context(name, values)

    def use_context(self, name: str) -> Context:
        """The current dict of context ``name`` for this tree."""
        return self.provider.get_context(name)

    def reset_context(self, name: str | None = None) -> None:
        """Restore context ``name`` (all contexts when ``None``) to the declared defaults."""
        self.provider.reset_context(name)

    # ---- naming and attachment -----------------------------------------------------------------

    def _fresh_name(self, module: nn.Module) -> str:
        base = type(module).__name__
        if base not in self._modules and f"{base}_1" not in self._modules:
            return base
        highest = 1
        for name in self._modules:
            if name == base:
                continue
            match = _SUFFIX.match(name)
            if match and match.group(1) == base:
                highest = max(highest, int(match.group(2)))
        return f"{base}_{highest + 1}"

    def _attach(self, name: str, module: nn.Module) -> None:
        self._adopt(module)
        self._modules[name] = module

    def _adopt(self, module: nn.Module) -> None:
        if not isinstance(module, nn.Module):
            raise ChainError(f"{type(self).__name__} children must be torch.nn.Module, got {type(module).__name__}")
        set_parent(module, self)
        if isinstance(module, Chain):
            provider_of(self).declare(module.__dict__["_provider"])

    def _detach(self, module: nn.Module) -> None:
        if get_parent(module) is self:
            set_parent(module, None)

    def name_of(self, child: nn.Module) -> str:
        """The key under which ``child`` is stored; :class:`ChainError` if it is not a child."""
        for name, module in self._children.items():
            if module is child:
                return name
        raise ChainError(f"{type(child).__name__} is not a child of {type(self).__name__}")

    def _rebuild(self, items: list[tuple[str, nn.Module]]) -> None:
        self._modules = OrderedDict(items)  # type: ignore[assignment]

    @property
    def _children(self) -> dict[str, nn.Module]:
        # ``_modules`` as Chains use it: torch types its values ``Module | None``, Chains never hold None
        return self._modules  # type: ignore[return-value]

    def _index(self, index: int, allow_end: bool = False) -> int:
        size = len(self._modules)
        normalized = index + size if index < 0 else index
        upper = size if allow_end else size - 1
        if not 0 <= normalized <= upper:
            raise ChainError(f"index {index} out of range for {type(self).__name__} with {size} children")
        return normalized

    # ---- container protocol --------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self._children.values())

    @overload
    def __getitem__(self, key: int) -> nn.Module: ...

    @overload
    def __getitem__(self, key: str) -> nn.Module: ...

    def __getitem__(self, key: int | str) -> nn.Module:
        if isinstance(key, str):
            try:
                return self._children[key]
            except KeyError:
                raise ChainError(
                    f"{type(self).__name__} has no child {key!r} (children: {', '.join(self._modules)})"
                ) from None
        return list(self._children.values())[self._index(key)]  # type: ignore[return-value]

    @property
    def device(self) -> torch.device:
        """The device of the chain's first parameter.

        Raises:
            ChainError: the chain holds no parameter (its device is undefined), naming the chain.
        """
        return self._first_parameter("device").device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the chain's first parameter.

        Raises:
            ChainError: the chain holds no parameter (its dtype is undefined), naming the chain.
        """
        return self._first_parameter("dtype").dtype

    def _first_parameter(self, what: str) -> torch.Tensor:
        parameter = next(self.parameters(), None)
        if parameter is None:
            raise ChainError(f"{type(self).__name__} has no parameters: its {what} is undefined")
        return parameter

    @property
    def children_names(self) -> list[str]:
        """Names of the direct children, in order."""
        return list(self._modules)

    # ---- traversal -----------------------------------------------------------------------------

    def walk(
        self, predicate: type[nn.Module] | Predicate | None = None, recurse: bool = False
    ) -> Iterator[tuple[nn.Module, Chain]]:
        """Yield ``(module, parent)`` for descendants matching ``predicate`` (a type or a callable).

        Without a predicate every descendant is yielded. A matching Chain is not descended into
        unless ``recurse`` is true; non-matching Chains are always descended into.
        """
        if predicate is None:
            check: Predicate = lambda _module, _parent: True  # noqa: E731
            recurse = True
        elif isinstance(predicate, type):
            layer_type = predicate
            check = lambda module, _parent: isinstance(module, layer_type)  # noqa: E731
        else:
            check = predicate
        for module in list(self._children.values()):
            if check(module, self):
                yield module, self
                if not recurse:
                    continue
            if isinstance(module, Chain):
                yield from module.walk(check, recurse)

    def layers(self, layer_type: type[T], recurse: bool = False) -> Iterator[T]:
        """Yield descendants of type ``layer_type`` (see :meth:`walk` for ``recurse``)."""
        for module, _ in self.walk(layer_type, recurse):
            yield module  # type: ignore[misc]

    def find(self, layer_type: type[T]) -> T | None:
        """The first descendant of type ``layer_type`` (depth first), or ``None``."""
        return next(self.layers(layer_type), None)

    def ensure_find(self, layer_type: type[T]) -> T:
        """The first descendant of type ``layer_type``; :class:`ChainError` if there is none."""
        found = self.find(layer_type)
        if found is None:
            raise ChainError(f"no {layer_type.__name__} in {type(self).__name__}")
        return found

    def find_parent(self, module: nn.Module) -> Chain | None:
        """The Chain in this tree that holds ``module`` as a child, or ``None``."""
        for candidate, parent in self.walk():
            if candidate is module:
                return parent
        return None

    def layer(self, path: str | int, layer_type: type[T] = nn.Module) -> T:  # type: ignore[assignment]
        """The descendant at a dotted ``path`` of child names or indices (``"Down.Chain_2.0"``).

        Raises :class:`ChainError` naming the first segment that does not resolve, or a type mismatch.
        """
        current: nn.Module = self
        segments: list[str | int] = [path] if isinstance(path, int) else list(path.split("."))
        for position, segment in enumerate(segments):
            if not isinstance(current, Chain):
                walked = ".".join(str(s) for s in segments[:position])
                raise ChainError(f"{walked!r} is a {type(current).__name__}, not a Chain: cannot resolve {path!r}")
            if isinstance(segment, int) or (isinstance(segment, str) and segment.lstrip("-").isdigit()):
                current = current[int(segment)]
            else:
                current = current[segment]
        if not isinstance(current, layer_type):
            raise ChainError(f"{path!r} is a {type(current).__name__}, expected {layer_type.__name__}")
        return current

    # ---- editing -------------------------------------------------------------------------------

    def insert(self, index: int, module: nn.Module, name: str | None = None) -> Chain:
        """Insert ``module`` before position ``index`` (``len(self)`` appends). Siblings keep their names."""
        position = self._index(index, allow_end=True)
        if name is not None and name in self._modules:
            raise ChainError(f"{type(self).__name__} already has a child named {name!r}")
        key = name or self._fresh_name(module)
        if not isinstance(module, nn.Module):
            raise ChainError(f"{type(self).__name__} children must be torch.nn.Module, got {type(module).__name__}")
        items = list(self._children.items())
        items.insert(position, (key, module))
        self._rebuild(items)
        self._adopt(module)
        return self

    def append(self, module: nn.Module, name: str | None = None) -> Chain:
        """Add ``module`` as the last child."""
        return self.insert(len(self._modules), module, name=name)

    def _position_of_type(self, layer_type: type[nn.Module]) -> int:
        for position, module in enumerate(self._children.values()):
            if isinstance(module, layer_type):
                return position
        raise ChainError(f"no direct child of type {layer_type.__name__} in {type(self).__name__}")

    def insert_before_type(self, layer_type: type[nn.Module], module: nn.Module) -> Chain:
        """Insert ``module`` right before the first direct child of type ``layer_type``."""
        return self.insert(self._position_of_type(layer_type), module)

    def insert_after_type(self, layer_type: type[nn.Module], module: nn.Module) -> Chain:
        """Insert ``module`` right after the first direct child of type ``layer_type``."""
        return self.insert(self._position_of_type(layer_type) + 1, module)

    def pop(self, index: int = -1) -> nn.Module:
        """Remove and return the child at ``index``."""
        position = self._index(index)
        items = list(self._children.items())
        _, module = items.pop(position)
        self._rebuild(items)
        self._detach(module)
        return module

    def remove(self, module: nn.Module) -> Chain:
        """Remove the child ``module`` (matched by identity)."""
        name = self.name_of(module)
        del self._modules[name]
        self._detach(module)
        return self

    def replace(self, old: nn.Module, new: nn.Module) -> Chain:
        """Put ``new`` in place of the child ``old``, under the same name."""
        name = self.name_of(old)
        self._detach(old)
        self._attach(name, new)
        return self

    def structural_copy(self) -> Chain:
        """A copy of the tree's Chains that shares every leaf (and so every weight) with the original.

        The copy can be edited (adapters injected, layers removed) without touching the original.
        Shared leaves keep the original as their ``parent``.
        """
        clone = copy.copy(self)
        clone.__dict__ = dict(self.__dict__)
        clone._parameters = dict(self._parameters)  # type: ignore[assignment]
        clone._buffers = dict(self._buffers)  # type: ignore[assignment]
        clone._modules = OrderedDict()  # type: ignore[assignment]
        clone.__dict__["_provider"] = self.__dict__["_provider"].copy()
        set_parent(clone, None)
        for name, module in self._children.items():
            if isinstance(module, Chain):
                child = module.structural_copy()
                clone._modules[name] = child
                set_parent(child, clone)
            else:
                clone._modules[name] = module
        return clone

    def __setstate__(self, state: dict[str, Any]) -> None:
        # deepcopy/unpickle: children must point at this new Chain, not the original.
        super().__setstate__(state)
        set_parent(self, None)  # re-set by the enclosing Chain's own __setstate__, if any
        for module in self._children.values():
            if module is not None:
                set_parent(module, self)

    def __repr__(self) -> str:
        return tree_repr(self)


class EarlyReturn(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by :class:`Return` and caught by the Chain holding it (no cost on the normal path)."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value


class Return(Module):
    """Ends the enclosing Chain: the Chain returns this layer's input as is.

    Must be a direct child of a Chain run by ``Chain.forward`` (not of ``Parallel``/``Sum``...); it works
    by raising :class:`EarlyReturn`, so it does not trace under ``torch.compile(fullgraph=True)``.
    """

    def forward(self, *args: Any) -> Any:
        raise EarlyReturn(args[0] if len(args) == 1 else args)
