"""``load_adapter``: from a catalog name or a local file to an adapter injected into a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    """Inject the adapter named ``name_or_path`` into ``model`` and return it.

    ``name_or_path`` is a catalog name (pulled and verified if needed) or a local weight file or folder; a
    local path needs ``family``. The family's plugin loader is called as ``loader(model, path, **options)``;
    when pickles are allowed (entry and user both opted in) the loader gets ``allow_pickle=True`` too, since
    family loaders refuse pickled files on their own otherwise.

    Raises:
        UnknownEntryError: neither a catalog name nor an existing file.
        MissingPluginError: the family has no installed plugin, or the entry's requirement is not met.
        PickleNotAllowedError: a pickled file without ``allow_pickle=True``.
    """
    local = Path(name_or_path).expanduser()
    if isinstance(name_or_path, Path) or local.exists():
        if not local.exists():
            raise RegistryError(f"no such weight file or folder: {local}")
        if family is None:
            raise RegistryError(f"loading the local file {local} needs family=... (e.g. 'lora')")
        if is_pickle_path(local.name) and not allow_pickle:
            raise PickleNotAllowedError(f"{local} is a pickled file; pass allow_pickle=True only if you trust it")
        weights: Path = local
    else:
        registry = registry if registry is not None else Registry()
        entry = registry.get(str(name_or_path))
        if family is not None and find_family(family).name != find_family(entry.family).name:
            raise RegistryError(f"{entry.name} is a {entry.family!r} entry, not {family!r}")
        family = entry.family
        ensure_plugin(entry)  # fail before downloading when no plugin can use the file
        weights = registry.pull(entry.name, allow_pickle=allow_pickle, check_plugin=False)
    loader = find_family(family).load_loader()
    if allow_pickle:
        options["allow_pickle"] = True
    return loader(model, weights, **options)
