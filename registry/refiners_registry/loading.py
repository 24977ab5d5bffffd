"""``load_adapter``: from a catalog name or a local file to an adapter injected into a model."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

from refiners_registry.catalog import CatalogEntry, is_pickle_path
from refiners_registry.errors import MissingPluginError, PickleNotAllowedError, RegistryError
from refiners_registry.registry import Registry

__all__ = ["check_requirement", "find_family", "load_adapter"]


def check_requirement(entry: CatalogEntry) -> None:
    """Raise :class:`MissingPluginError` unless the distribution named by ``entry.requires`` is installed and fits."""
    if entry.requires is None:
        return
    requirement = Requirement(entry.requires)
    if requirement.marker is not None and not requirement.marker.evaluate():
        return
    try:
        installed = metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        raise MissingPluginError(f"{entry.name} needs {requirement}: pip install '{requirement}'") from None
    if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
        raise MissingPluginError(f"{entry.name} needs {requirement}, but {requirement.name} {installed} is installed")


def find_family(family: str) -> Any:
    """The installed :class:`~refiners_core.AdapterFamily` called ``family`` (aliases included)."""
    from refiners_core.plugins import adapter_families

    families = adapter_families()
    found = families.get(family)
    if found is None:
        known = ", ".join(sorted(families)) or "none"
        raise MissingPluginError(f"no installed plugin provides the adapter family {family!r} (installed: {known})")
    return found


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

    ``name_or_path`` is a catalog name (pulled and verified if needed) or a local weight file; a local file
    needs ``family``. The family's plugin loader is called as ``loader(model, path, **options)``.

    Raises:
        UnknownEntryError: neither a catalog name nor an existing file.
        MissingPluginError: the family has no installed plugin, or the entry's requirement is not met.
        PickleNotAllowedError: a pickled file without ``allow_pickle=True``.
    """
    local = Path(name_or_path).expanduser()
    if isinstance(name_or_path, Path) or local.is_file():
        if not local.is_file():
            raise RegistryError(f"no such weight file: {local}")
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
        check_requirement(entry)
        find_family(family)  # fail before downloading when no plugin can use the file
        weights = registry.pull(entry.name, allow_pickle=allow_pickle)
    loader = find_family(family).load_loader()
    return loader(model, weights, **options)
