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
    """Print refiners warnings (plugins, catalogs) as one ``refiners: warning: ...`` line each.

    Other warnings pass through to Python's usual display. They are shown after the capture ends, so
    showing one can never feed the capture again.
    """
    from refiners_core.errors import RefinersWarning

    pending: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RefinersWarning)
            try:
                yield
            finally:
                pending = list(caught)
    finally:
        shown: set[str] = set()
        for item in pending:
            if issubclass(item.category, RefinersWarning):
                message = str(item.message)
                if message not in shown:  # the same catalog read twice in one command warns once
                    shown.add(message)
                    _error_line(f"refiners: warning: {message}")
            else:
                warnings.showwarning(item.message, item.category, item.filename, item.lineno)


def _error_line(message: str) -> None:
    """Write one line on stderr (inner newlines flattened)."""
    from refiners_core.text import printable

    sys.stderr.write(printable(message) + "\n")
    sys.stderr.flush()


def _version_only(args: Sequence[str]) -> bool:
    """Whether the command line asks for the version alone (answered without loading any plugin)."""
    return bool(args) and args[0] == "--version"


def _kind(error: BaseException, name: str) -> bool:
    """Whether ``error`` is a click exception of class ``name`` (typer may vendor its own click)."""
    return any(cls.__name__ == name for cls in type(error).__mro__)


def run_app(app: typer.Typer, args: Sequence[str]) -> int:
    """Run ``app`` on ``args`` and return the exit code; every failure becomes one ``Error:`` line on stderr.

    Command-line mistakes that the option parser catches (unknown option, bad value, missing argument)
    exit 2 without the boxed usage message; a :class:`RefinersError` exits with its ``exit_code``
    (default 1); an interruption exits 130; any other exception exits 1 without a traceback
    (``REFINERS_DEBUG=1`` shows it). Every command gets this, including those plugins add.
    """
    from refiners_core.cli.fast_path import fast_invoker
    from refiners_core.errors import RefinersError

    try:
        fast = fast_invoker(app, args)  # the listing commands skip typer's parser (see fast_path)
        result = fast() if fast is not None else app(args=list(args), prog_name="refiners", standalone_mode=False)
    except KeyboardInterrupt:
        _error_line("Error: interrupted")
        return 130
    except BrokenPipeError:  # the reader went away (`refiners adapters list | head -1`): nothing to report
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet
        return 141
    except RefinersError as error:
        _error_line(f"Error: {error}")
        return int(getattr(error, "exit_code", 1))
    except Exception as error:
        if _kind(error, "NoArgsIsHelpError"):  # a group called bare: its help (typer may have printed it already)
            if message := error.format_message().strip():  # type: ignore[attr-defined]
                typer.echo(message)
            return 2
        if _kind(error, "UsageError"):
            ctx = getattr(error, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            _error_line(f"Error: {error.format_message()}{hint}")  # type: ignore[attr-defined]
            return 2
        if _kind(error, "ClickException"):
            _error_line(f"Error: {error.format_message()}")  # type: ignore[attr-defined]
            return int(getattr(error, "exit_code", 1))
        if _kind(error, "Abort"):
            _error_line("Error: interrupted")
            return 130
        if os.environ.get("REFINERS_DEBUG"):
            raise
        if isinstance(error, OSError):
            where = f" ({error.filename})" if error.filename else ""
            _error_line(f"Error: {error.strerror or error}{where}")
        else:
            _error_line(f"Error: unexpected {type(error).__name__}: {error} (REFINERS_DEBUG=1 shows the traceback)")
        return 1
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``refiners`` console script: load plugins, add their commands, run.

    ``refiners --version`` loads no plugin. Plugin imports are bounded in time
    (``REFINERS_PLUGIN_IMPORT_TIMEOUT``). Whatever fails, the user sees one ``Error:`` line, never a traceback.
    """
    args = list(argv) if argv is not None else sys.argv[1:]
    if _version_only(args):
        from refiners_core import __version__

        typer.echo(f"refiners-core {__version__}")
        sys.exit(0)
    from refiners_core.plugins.manager import import_timeout_setting, register_commands, set_import_timeout

    set_import_timeout(import_timeout_setting())
    app = build_app()
    with plugin_warnings_to_stderr():
        try:
            register_commands(app)
        except PluginError as error:
            _error_line(f"Error: {error}")
            code = 1
        else:
            code = run_app(app, args)
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (`refiners adapters list | head -1`): not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet
    sys.exit(code)


if __name__ == "__main__":
    main()
