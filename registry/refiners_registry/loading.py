"""``load_adapter`` with a registry at hand: from a catalog name or a local file to an adapter injected into a model.

It delegates to :func:`refiners_core.load_adapter` (the family's loader, chosen by name, catalog entry or
detection); the ``registry=`` argument picks the catalogs and cache to use instead of the default ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from refiners_core.plugins.resolution import ResolutionError
from refiners_core.plugins.resolution import load_adapter as core_load_adapter
from refiners_registry.catalog import is_pickle_path
from refiners_registry.errors import PickleNotAllowedError, RegistryError
from refiners_registry.registry import Registry
from refiners_registry.requirements import ensure_plugin, find_family

__all__ = ["load_adapter"]


def load_adapter(
    model: Any,
    name_or_path: str | Path,
    *,
    family: str | None = None,
    registry: Registry | None = None,
    allow_pickle: bool = False,
    **options: Any,
) -> Any:
    """Inject the adapter named ``name_or_path`` into ``model`` (a pipeline or one of its components); return it.

    ``name_or_path`` is a catalog name (pulled and verified if needed) or a local weight file or folder (its family
    is ``family``, or detected). The family's loader is called as ``loader(model, path, **options)``; when pickles
    are allowed (entry and user both opted in) it gets ``allow_pickle=True`` too.

    Raises:
        UnknownEntryError: neither a catalog name nor an existing file.
        MissingPluginError: the family has no installed plugin, or the entry's requirement is not met.
        PickleNotAllowedError: a pickled file without ``allow_pickle=True``.
        ResolutionError: an adapter made for another base model than the pipeline's.
    """
    local = Path(name_or_path).expanduser()
    if isinstance(name_or_path, Path) or local.exists():
        if not local.exists():
            raise RegistryError(f"no such weight file or folder: {local}")
        if is_pickle_path(local.name) and not allow_pickle:
            raise PickleNotAllowedError(f"{local} is a pickled file; pass allow_pickle=True only if you trust it")
        if family is not None:
            find_family(family)  # a missing plugin is a MissingPluginError here, as for catalog names
        return core_load_adapter(model, local, family=family, allow_pickle=allow_pickle, **options)
    registry = registry if registry is not None else Registry()
    entry = registry.get(str(name_or_path))
    if family is not None and find_family(family).name != find_family(entry.family).name:
        raise RegistryError(f"{entry.name} is a {entry.family!r} entry, not {family!r}")
    ensure_plugin(entry)  # fail before downloading when no plugin can use the file
    architecture = getattr(model, "architecture", None)
    if isinstance(architecture, str) and entry.base_model and entry.base_model != architecture:
        raise ResolutionError(
            f"{entry.name}: this adapter is for {entry.base_model}, but the base model is {architecture}"
        )
    weights = registry.pull(entry.name, allow_pickle=allow_pickle, check_plugin=False)
    return core_load_adapter(model, weights, family=entry.family, allow_pickle=allow_pickle, **options)
