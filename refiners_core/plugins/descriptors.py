"""Metadata that plugins return from their hooks. Importing this module never imports torch."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from refiners_core.errors import PluginError


def import_object(reference: str) -> Any:
    """Import ``"package.module:attribute"`` and return the attribute.

    Raises:
        PluginError: when the reference is malformed, the module fails to import, or the attribute is missing.
    """
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise PluginError(f"invalid reference {reference!r}: expected 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise PluginError(f"cannot import {module_name!r} (from {reference!r}): {error}") from error
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as error:
            raise PluginError(f"{module_name!r} has no attribute {attribute!r} (from {reference!r})") from error
    return target


@dataclass(frozen=True)
class AdapterFamily:
    """An adapter family contributed by a plugin.

    Attributes:
        name: unique family name used by catalogs (``lora``, ``controlnet``, ``t2i``, ``ip-adapter``).
        description: one line for ``refiners plugins`` and ``refiners adapters info``.
        formats: weight layouts this family reads (``diffusers``, ``kohya``, ``peft``, ...).
        base_models: base-model family names it supports (``sd15``, ``sdxl``).
        loader: ``"module:function"``; the function is called as ``loader(model, weights, **options)``
            where ``weights`` is a path or a state dict, and returns the injected adapter (or manager).
        aliases: other names catalogs may use for this family (``t2i-adapter`` for ``t2i``).
    """

    name: str
    description: str
    loader: str
    formats: tuple[str, ...] = ()
    base_models: tuple[str, ...] = ()
    aliases: tuple[str, ...] = field(default=())

    def load_loader(self) -> Callable[..., Any]:
        """Import and return the loader function (imports torch and the family's modules)."""
        return import_object(self.loader)


@dataclass(frozen=True)
class BaseModelFamily:
    """A base-model family contributed by a plugin (e.g. ``sd15``, ``sdxl``).

    Attributes:
        name: unique name used by catalogs and adapter families.
        description: one line for listings.
        loader: ``"module:function"`` building the model, called as ``loader(path, device=None, dtype=None)``.
    """

    name: str
    description: str
    loader: str

    def load_loader(self) -> Callable[..., Any]:
        """Import and return the loader function."""
        return import_object(self.loader)
