"""The registry as a ``refiners`` plugin: the CLI command groups and the bundled catalog.

Importing this module imports neither torch nor huggingface_hub.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from refiners_core.plugins.hookspecs import hookimpl
from refiners_registry.sources import bundled_catalog_path

if TYPE_CHECKING:
    import typer


@hookimpl
def refiners_register_commands(cli: typer.Typer) -> None:
    """Add ``refiners adapters ...`` and ``refiners cache ...``."""
    from refiners_registry.cli import register

    register(cli)


@hookimpl
def refiners_catalog_entries() -> Iterable[Path]:
    """The catalog bundled with refiners-registry."""
    return [bundled_catalog_path()]
