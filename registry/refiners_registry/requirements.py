"""Whether the plugins an entry needs are installed: its ``requires`` and the plugin providing its family."""

from __future__ import annotations

from importlib import metadata
from typing import Any

from packaging.requirements import Requirement

from refiners_registry.catalog import CatalogEntry
from refiners_registry.errors import MissingPluginError

__all__ = ["BASE_MODEL_FAMILY", "check_requirement", "ensure_plugin", "find_family"]

BASE_MODEL_FAMILY = "base-model"


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


def ensure_plugin(entry: CatalogEntry) -> None:
    """Raise :class:`MissingPluginError` unless an installed plugin can use the entry (metadata only, no torch)."""
    check_requirement(entry)
    if entry.family != BASE_MODEL_FAMILY:
        find_family(entry.family)
        return
    from refiners_core.plugins import base_model_families

    if entry.base_model not in base_model_families():
        hint = f": pip install '{entry.requires}'" if entry.requires else ""
        raise MissingPluginError(f"no installed plugin provides the base model {entry.base_model!r}{hint}")
