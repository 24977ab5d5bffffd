"""The registry's name resolver (the ``refiners_name_resolvers`` hook): catalog name -> pulled, verified files.

``refiners_core.load_base_model("sd15/...")`` and ``load_adapter(pipeline, "sdxl/lora-...")`` reach the catalog
through it; base-model bundles (folders) and single-file base-model entries resolve like adapters.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from refiners_core import Resolved
from refiners_core.plugins.resolution import BASE_MODEL_FAMILY, ResolutionError
from refiners_registry.errors import UnknownEntryError
from refiners_registry.registry import Registry

__all__ = ["resolve_catalog_name"]


def resolve_catalog_name(
    name: str,
    *,
    report: Callable[[str], None] | None = None,
    allow_pickle: bool = False,
    base_model: str | None = None,
) -> Resolved | None:
    """The local files of the catalog entry ``name`` (pulled and sha256-checked on demand), or ``None`` when no
    catalog has that name.

    Raises:
        ResolutionError: ``base_model`` is given and the entry is made for another base model (before any
            download).
        MissingPluginError: no installed plugin can use the entry (before any download).
        PickleNotAllowedError, NotCachedError, NetworkError, HashMismatchError: as :meth:`Registry.pull`.
    """
    registry = Registry(endpoint=os.environ.get("HF_ENDPOINT"))  # read now, not when huggingface_hub was imported
    registry.report = report
    try:
        entry = registry.get(name)
    except UnknownEntryError:
        return None
    if base_model is not None and entry.family != BASE_MODEL_FAMILY and entry.base_model != base_model:
        raise ResolutionError(f"{name}: this adapter is for {entry.base_model}, but the base model is {base_model}")
    path = registry.pull(entry.name, allow_pickle=allow_pickle)
    return Resolved(path=path, family=entry.family, base_model=entry.base_model, allow_pickle=entry.allow_pickle)
