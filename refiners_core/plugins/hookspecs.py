"""Hook specifications of the ``refiners`` plugin project.

A plugin is a module exposed through the entry-point group ``refiners``; it implements some of the
hooks below with the ``refiners_core.hookimpl`` marker. Hooks return metadata only: a plugin module
must import without importing torch. Heavy code is named by ``"module:attribute"`` strings and
imported on first use (see :mod:`refiners_core.plugins.descriptors`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import typer

    from refiners_core.plugins.descriptors import AdapterFamily, BaseModelFamily, NameResolver

PROJECT_NAME = "refiners"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def refiners_adapter_families() -> Iterable[AdapterFamily]:
    """Return the adapter families this plugin contributes (LoRA, ControlNet, ...)."""


@hookspec
def refiners_base_models() -> Iterable[BaseModelFamily]:
    """Return the base-model families this plugin contributes (``sd15``, ``sdxl``, ...)."""


@hookspec
def refiners_catalog_entries() -> Iterable[Path | str | Mapping[str, Any]]:
    """Return catalog sources: paths of TOML catalog files, or entries as mappings.

    Entries follow the registry's catalog schema (one ``[[adapter]]`` table each).
    """


@hookspec
def refiners_register_commands(cli: typer.Typer) -> None:
    """Add command groups to the ``refiners`` CLI, e.g. ``cli.add_typer(app, name="adapters")``."""


@hookspec
def refiners_name_resolvers() -> Iterable[NameResolver]:
    """Return resolvers turning names that are not local paths into local files (the registry's catalog).

    ``refiners generate --base NAME`` and ``--adapter FAMILY:NAME`` ask each resolver in plugin order.
    """
