"""The registry as a ``refiners`` plugin: the CLI command groups, the bundled catalog and the name resolver.

Importing this module imports neither torch nor huggingface_hub.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from refiners_core.plugins.descriptors import NameResolver
from refiners_core.plugins.hookspecs import hookimpl

if TYPE_CHECKING:
    import typer


@hookimpl
def refiners_register_commands(cli: typer.Typer) -> None:
    """Add ``refiners adapters ...`` and ``refiners cache ...``."""
    from refiners_registry.cli import register

    register(cli)


@hookimpl
def refiners_name_resolvers() -> list[NameResolver]:
    """Catalog names (``sdxl/lora-...``, base-model bundles and files) for ``load_adapter``/``load_base_model``."""
    return [
        NameResolver(
            name="catalog",
            description="refiners-registry catalog names, pulled and sha256-checked on demand",
            resolver="refiners_registry.resolver:resolve_catalog_name",
        )
    ]


@hookimpl
def refiners_catalog_entries() -> Iterable[Path]:
    """The catalog bundled with refiners-registry."""
    from refiners_registry.sources import bundled_catalog_path  # the catalog parser stays off the CLI's start-up

    return [bundled_catalog_path()]
