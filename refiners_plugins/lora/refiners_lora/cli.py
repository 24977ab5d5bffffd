"""The ``refiners lora ...`` command group (``inspect``). Importing this module never imports torch."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

lora_app = typer.Typer(name="lora", help="Inspect LoRA files.", no_args_is_help=True)


def register(cli: typer.Typer) -> None:
    """Add the ``lora`` group to the ``refiners`` app."""
    cli.add_typer(lora_app, name="lora")


def _clean(text: object) -> str:
    # file metadata reaches the terminal: no control characters (escape sequences, newlines)
    return "".join(character if character.isprintable() else "?" for character in str(text))


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


@lora_app.command("inspect")
def inspect_command(
    file: Annotated[str, typer.Argument(help="A LoRA file (or a folder holding one).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Print a LoRA file's algorithms, rank, alpha, base model, components, trigger words and size."""
    from refiners_core.errors import RefinersError
    from refiners_lora.inspect import inspect_lora

    try:
        summary = inspect_lora(file)
    except (RefinersError, OSError, ValueError) as error:
        sys.stderr.write("Error: " + _clean(str(error)).strip() + "\n")
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2))
        return
    rows = [
        ("file", summary.file),
        ("title", summary.title or "-"),
        ("format", summary.format),
        ("algorithms", ", ".join(summary.algorithms) or "-"),
        ("rank", ", ".join(map(str, summary.ranks)) or "-"),
        ("alpha", ", ".join(f"{alpha:g}" for alpha in summary.alphas) or "-"),
        ("base model", summary.base_model or "unknown"),
        ("components", ", ".join(f"{name} ({count} layers)" for name, count in summary.components.items())),
        ("trigger words", ", ".join(summary.trigger_words) or "-"),
        ("size", f"{_size(summary.size_bytes)}, {summary.parameters:,} parameters"),
    ]
    if summary.unknown_keys:
        rows.append(("unknown keys", ", ".join(summary.unknown_keys[:10])))
    for label, value in rows:
        print(f"{label + ':':<15}{_clean(value)}")
