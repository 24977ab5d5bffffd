"""Entry point of refiners-train: the ``refiners train`` command group.

Imported every time ``refiners`` starts: no torch here; the commands import it when they run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from refiners_core import hookimpl

if TYPE_CHECKING:
    import typer


@hookimpl
def refiners_register_commands(cli: typer.Typer) -> None:
    """Add ``refiners train`` (``refiners train lora ...``)."""
    from refiners_train.cli import register

    register(cli)
