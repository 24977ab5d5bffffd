"""The registry's name resolver (the ``refiners_name_resolvers`` hook): catalog name -> pulled, verified files.

``refiners_core.load_base_model("sd15/...")`` and ``load_adapter(pipeline, "sdxl/lora-...")`` reach the catalog
through it; base-model bundles (folders) and single-file base-model entries resolve like adapters.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from refiners_core import Resolved
from refiners_registry.errors import UnknownEntryError
from refiners_registry.registry import Registry

__all__ = ["resolve_catalog_name"]


def resolve_catalog_name(
    name: str, *, report: Callable[[str], None] | None = None, allow_pickle: bool = False
) -> Resolved | None:
    """The local files of the catalog entry ``name`` (pulled and sha256-checked on demand), or ``None`` when no
    catalog has that name.

    Raises:
        MissingPluginError: no installed plugin can use the entry (before any download).
        PickleNotAllowedError, NotCachedError, NetworkError, HashMismatchError: as :meth:`Registry.pull`.
    """
    registry = Registry(endpoint=os.environ.get("HF_ENDPOINT"))  # read now, not when huggingface_hub was imported
    registry.report = report
    try:
        entry = registry.get(name)
    except UnknownEntryError:
        return None
    path = registry.pull(entry.name, allow_pickle=allow_pickle)
    return Resolved(path=path, family=entry.family, base_model=entry.base_model, allow_pickle=entry.allow_pickle)
