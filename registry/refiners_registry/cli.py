"""The ``refiners adapters ...`` and ``refiners cache ...`` command groups.

Output contract: tables and messages go through rich; ``--json`` prints plain JSON on stdout; errors are
one ``Error: ...`` line on stderr with the exit code of the error's kind (see the README); ``pull`` prints
the local path alone on the last line of stdout, never wrapped. ``list``, ``search`` and ``info`` import
neither torch nor anything that touches the network.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from refiners_core.text import printable
from refiners_registry.errors import RegistryError, exit_code_for

if TYPE_CHECKING:
    from refiners_registry.catalog import CatalogEntry

__all__ = ["adapters_app", "cache_app", "register"]

adapters_app = typer.Typer(
    name="adapters", help="Find, download and verify adapters from the catalog.", no_args_is_help=True
)
cache_app = typer.Typer(name="cache", help="Inspect and clean the local download cache.", no_args_is_help=True)

_state: dict[str, bool] = {"offline": False}

OfflineOption = Annotated[bool, typer.Option("--offline", help="Use only the local cache (same as HF_HUB_OFFLINE=1).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def register(cli: typer.Typer) -> None:
    """Add the ``adapters`` and ``cache`` groups to the ``refiners`` app."""
    cli.add_typer(adapters_app, name="adapters")
    cli.add_typer(cache_app, name="cache")


@adapters_app.callback()
def _adapters(offline: OfflineOption = False) -> None:
    """Find, download and verify adapters from the catalog."""
    _state["offline"] = offline


@cache_app.callback()
def _cache(offline: OfflineOption = False) -> None:
    """Inspect and clean the local download cache."""
    _state["offline"] = offline


def _err(message: str) -> None:
    sys.stderr.write(printable(message).strip() + "\n")
    sys.stderr.flush()


def _out(line: str) -> None:
    """One line on stdout, control characters from catalogs or metadata escaped."""
    sys.stdout.write(printable(line) + "\n")


@contextmanager
def _errors() -> Iterator[None]:
    """Turn registry errors into one ``Error:`` line and their exit code; print catalog warnings on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except RegistryError as error:
            _flush_warnings(caught)
            _err(f"Error: {error}")
            raise typer.Exit(exit_code_for(error)) from None
        except KeyboardInterrupt:
            _err("Error: interrupted")
            raise typer.Exit(130) from None
    _flush_warnings(caught)


def _flush_warnings(caught: list[warnings.WarningMessage]) -> None:
    for item in caught:
        _err(f"warning: {item.message}")
    caught.clear()


def _registry(offline: bool = False) -> Any:
    from refiners_registry.registry import Registry

    return Registry(offline=True if (offline or _state["offline"]) else None)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _size(entry: CatalogEntry) -> str:
    """Download size of an entry when the catalog gives every file's size, else ``-``."""
    sizes = [f.size for f in entry.source.files if f.size is not None]
    return _human(sum(sizes)) if len(sizes) == len(entry.source.files) else "-"


def _table(entries: list[CatalogEntry]) -> None:
    """One line per entry; the description is cut to the terminal width (80 columns when not a terminal).

    Only catalog data is shown (the cache is not read, which keeps listing fast): ``info``, ``cache ls``
    and ``list --installed`` tell what is cached.
    """
    import shutil

    headers = ("name", "family", "base", "size", "description")
    rows = [
        [printable(cell) for cell in (entry.name, entry.family, entry.base_model, _size(entry), entry.description)]
        for entry in entries
    ]
    widths = [max([len(headers[i]), *(len(row[i]) for row in rows)]) for i in range(len(headers) - 1)]
    room = max(shutil.get_terminal_size((80, 24)).columns - sum(widths) - 2 * len(widths) - 1, 12)
    for row in [list(headers), *rows]:
        cells = [row[i].rjust(width) if i == 3 else row[i].ljust(width) for i, width in enumerate(widths)]
        description = row[-1] if len(row[-1]) <= room else row[-1][: room - 1] + "…"
        sys.stdout.write(("  ".join([*cells, description])).rstrip() + "\n")


@adapters_app.command("list")
def list_(
    family: Annotated[str | None, typer.Option("--family", help="Only this adapter family.")] = None,
    base_model: Annotated[str | None, typer.Option("--base-model", help="Only this base model.")] = None,
    installed: Annotated[bool, typer.Option("--installed", help="Only entries whose files are cached.")] = False,
    as_json: JsonOption = False,
) -> None:
    """List catalog entries."""
    with _errors():
        registry = _registry()
        entries = registry.list(family=family, base_model=base_model)
        if installed:
            entries = [e for e in entries if registry.is_installed(e.name)]
        if as_json:
            _print_json([e.to_dict() for e in entries])
        else:
            _table(entries)


@adapters_app.command()
def search(
    text: Annotated[str, typer.Argument(help="Words to look for in names, descriptions and tags.")],
    as_json: JsonOption = False,
) -> None:
    """Search catalog entries."""
    with _errors():
        registry = _registry()
        entries = registry.search(text)
        if as_json:
            _print_json([e.to_dict() for e in entries])
        else:
            _table(entries)


@adapters_app.command()
def info(name: Annotated[str, typer.Argument(help="Catalog name.")], as_json: JsonOption = False) -> None:
    """Show one entry: what it is, where it comes from, and whether it is cached."""
    with _errors():
        registry = _registry()
        entry = registry.get(name)
        if as_json:
            _print_json(entry.to_dict())
            return
        # plain writes: long paths must stay on one line whatever the terminal width
        lines = [f"{entry.name}  {entry.description}"]
        rows = [
            ("family", entry.family),
            ("base model", entry.base_model),
            ("license", entry.license),
            ("tags", ", ".join(entry.tags) or "-"),
            ("size", _size(entry)),
            ("requires", entry.requires or "-"),
            ("repository", entry.source.repo_id),
            ("revision", entry.source.revision),
            ("catalog", entry.origin),
        ]
        lines += [f"  {key:<11}{value}" for key, value in rows]
        for file, local in registry.local_paths(name).items():
            lines.append(f"  file       {file}  ({'cached: ' + str(local) if local else 'not cached'})")
        for line in lines:
            _out(line)


@adapters_app.command()
def pull(
    name: Annotated[str, typer.Argument(help="Catalog name.")],
    revision: Annotated[str | None, typer.Option("--revision", help="Another 40-hex commit.")] = None,
    local_dir: Annotated[Path | None, typer.Option("--local-dir", help="Copy the files into this folder.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Download again even if cached.")] = False,
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle", help="Accept pickled files when the entry allows them too.")
    ] = False,
    skip_plugin_check: Annotated[
        bool, typer.Option("--skip-plugin-check", help="Download even if no installed plugin can use the entry.")
    ] = False,
    offline: OfflineOption = False,
) -> None:
    """Download an entry's files and check their sha256; print the local path on the last line."""
    with _errors():
        registry = _registry(offline)
        registry.get(name)
        _err(f"pulling {name}")
        registry.report = _err
        path = registry.pull(
            name,
            revision=revision,
            local_dir=local_dir,
            force=force,
            allow_pickle=allow_pickle,
            check_plugin=not skip_plugin_check,
        )
        _err("sha256 ok")
    sys.stdout.write(f"{path}\n")


@adapters_app.command()
def verify(
    names: Annotated[list[str] | None, typer.Argument(help="Catalog names (default: all cached).")] = None,
) -> None:
    """Hash cached files again and compare them with the catalog."""
    with _errors():
        registry = _registry()
        explicit = bool(names)
        targets = names or [e.name for e in registry.list()]
        bad = missing = checked = 0
        for target in targets:
            result = registry.verify(target)
            if not result.cached:
                if explicit:
                    missing += 1
                    _err(f"{target}: not cached")
                continue
            for check in result.files:
                checked += 1
                if check.status == "ok":
                    _out(f"ok        {target}  {check.path}")
                elif check.status == "missing":
                    missing += 1
                    _out(f"missing   {target}  {check.path}")
                else:
                    bad += 1
                    _out(f"MISMATCH  {target}  {check.path}  want {check.want} got {check.got}")
        if bad:
            _err(f"Error: {bad} file(s) do not match the catalog; run 'refiners adapters pull --force NAME'")
            raise typer.Exit(5)
        if missing:
            _err(f"Error: {missing} file(s) not cached; run 'refiners adapters pull NAME'")
            raise typer.Exit(6)
        if not checked:
            _err("nothing cached to verify")


@adapters_app.command()
def remove(names: Annotated[list[str], typer.Argument(help="Catalog names (files they share go too).")]) -> None:
    """Remove entries' files from the cache; a file another entry also lists stays."""
    with _errors():
        registry = _registry()
        cached = [name for name in names if any(registry.local_paths(name).values())]
        for name in names:
            if name not in cached:
                _err(f"{name} is not cached")
        if not cached:
            return
        for name in cached:
            for path, others in registry.shared_files(name, together=names).items():
                _err(f"kept {path} of {name}: also used by {', '.join(others)} (name them too to remove it)")
        freed = registry.remove(*cached)
        _out(f"removed {', '.join(cached)} ({_human(freed)} freed)")


@cache_app.command("dir")
def cache_dir() -> None:
    """Print the cache folder."""
    from refiners_registry.download import default_cache_dir

    sys.stdout.write(f"{default_cache_dir()}\n")


@cache_app.command("ls")
def cache_ls(as_json: JsonOption = False) -> None:
    """List cached catalog entries with their size on disk."""
    with _errors():
        registry = _registry()
        rows = []
        for entry in registry.list():
            paths = [p for p in registry.local_paths(entry.name).values() if p is not None]
            if paths:
                size = sum(p.stat().st_size for p in paths)
                complete = len(paths) == len(entry.source.files)
                rows.append({"name": entry.name, "size": size, "complete": complete, "paths": [str(p) for p in paths]})
        if as_json:
            _print_json(rows)
            return
        for row in rows:
            state = "" if row["complete"] else "  (partial)"
            _out(f"{row['name']}  {_human(row['size'])}{state}  {row['paths'][0]}")
        _err(f"{len(rows)} cached entries, {_human(sum(r['size'] for r in rows))}")


@cache_app.command("prune")
def cache_prune(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would be removed.")] = False,
) -> None:
    """Remove leftovers: unfinished downloads, blobs no snapshot uses, dangling links, empty folders."""
    from refiners_registry.cache import prune
    from refiners_registry.download import default_cache_dir

    with _errors():
        removed, freed = prune(default_cache_dir(), dry_run=dry_run)
        for path in removed:
            sys.stdout.write(f"{'would remove' if dry_run else 'removed'} {path}\n")
        _err(f"{len(removed)} item(s), {_human(freed)}{' would be' if dry_run else ''} freed")


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def main(argv: list[str] | None = None) -> None:
    """Run the two groups without the core CLI (``python -m refiners_registry``)."""
    app = typer.Typer(no_args_is_help=True, add_completion=False)
    register(app)
    app(args=argv, prog_name="refiners")
