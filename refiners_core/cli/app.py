"""Builds the ``refiners`` typer app and runs it (console-script entry point ``main``)."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import typer

from refiners_core.errors import PluginError

APP_HELP = "Refiners: adapters for PyTorch models, and the plugins that provide them."


def _print_version(value: bool) -> None:
    if value:
        from refiners_core import __version__

        typer.echo(f"refiners-core {__version__}")
        raise typer.Exit()


def build_app() -> typer.Typer:
    """Return the typer app with the core commands only (no plugin commands)."""
    from refiners_core.cli import check, generate_cmd, plugins_cmd, scaffold

    app = typer.Typer(name="refiners", help=APP_HELP, no_args_is_help=True, add_completion=False)

    @app.callback()
    def root(
        version: bool = typer.Option(
            False, "--version", callback=_print_version, is_eager=True, help="Print the refiners-core version and exit."
        ),
        offline: bool = typer.Option(
            False, "--offline", help="Use only local caches, never the network (sets HF_HUB_OFFLINE=1)."
        ),
    ) -> None:
        """Refiners: adapters for PyTorch models, and the plugins that provide them."""
        if offline:
            # the one switch every downloading plugin honours (huggingface_hub and the registry read it)
            os.environ["HF_HUB_OFFLINE"] = "1"

    app.command("plugins")(plugins_cmd.plugins)
    plugin_app = typer.Typer(help="Write and check third-party plugins.", no_args_is_help=True)
    plugin_app.command("new")(scaffold.new)
    plugin_app.command("check")(check.check)
    app.add_typer(plugin_app, name="plugin")
    generate_cmd.register(app)
    return app


@contextmanager
def plugin_warnings_to_stderr() -> Iterator[None]:
    """Print RefinersPluginWarning as one ``refiners: warning: ...`` line each; other warnings pass through."""
    from refiners_core.plugins import RefinersPluginWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RefinersPluginWarning)
        try:
            yield
        finally:
            for item in caught:
                if issubclass(item.category, RefinersPluginWarning):
                    typer.echo(f"refiners: warning: {item.message}", err=True)
                else:
                    warnings.showwarning(item.message, item.category, item.filename, item.lineno)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``refiners`` console script: load plugins, add their commands, run."""
    from refiners_core.plugins import register_commands

    app = build_app()
    with plugin_warnings_to_stderr():
        try:
            register_commands(app)
            app(args=list(argv) if argv is not None else None, prog_name="refiners", standalone_mode=True)
        except PluginError as error:
            typer.echo(f"refiners: error: {error}", err=True)
            sys.exit(1)


if __name__ == "__main__":
    main()
