"""Lazy package exports (PEP 562): names that need torch are imported on first attribute access.

Every distribution of the ecosystem keeps its package import and its plugin entry point torch-free
this way, so ``refiners --help`` and plugin discovery stay fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, namespace: dict[str, Any], names: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Build a package's ``__getattr__`` and ``__dir__`` serving ``names`` (``{name: module}``) lazily.

    Usage in a package ``__init__``::

        __getattr__, __dir__ = lazy_exports(__name__, globals(), {"Chain": "refiners_core.chain"})

    A resolved name is cached in ``namespace`` so later accesses cost nothing.
    """

    def __getattr__(name: str) -> Any:
        module_name = names.get(name)
        if module_name is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module_name), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace.get("__all__", ()), *names})

    return __getattr__, __dir__
