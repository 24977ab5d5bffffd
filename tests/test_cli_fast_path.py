"""The listing commands' direct route (refiners_core.cli.fast_path) answers exactly as typer does."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from refiners_core.cli.app import build_app, run_app
from refiners_core.cli.fast_path import fast_invoker
from refiners_core.plugins.manager import register_commands

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def app() -> Iterator[object]:
    """The real ``refiners`` app with the installed plugins' commands."""
    cli = build_app()
    register_commands(cli)
    yield cli


def by_typer(app: object, args: list[str]) -> int:
    """Exit code of ``args`` parsed by typer (what run_app did before the direct route)."""
    return int(app(args=args, prog_name="refiners", standalone_mode=False) or 0)  # type: ignore[operator]


UNDERSTOOD = [
    ["plugins"],
    ["plugins", "--json"],
    ["adapters", "list"],
    ["adapters", "list", "--json"],
    ["adapters", "list", "--family", "lora", "--json"],
    ["adapters", "list", "--family=lora", "--base-model", "sd15"],
    ["adapters", "list", "--family", "no-such-family"],
]


@pytest.mark.parametrize("args", UNDERSTOOD)
def test_direct_route_prints_what_typer_prints(
    app: object, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert fast_invoker(app, args) is not None
    direct = run_app(app, args)  # type: ignore[arg-type]
    direct_out = capsys.readouterr()
    parsed = by_typer(app, args)
    parsed_out = capsys.readouterr()
    assert (direct, direct_out.out, direct_out.err) == (parsed, parsed_out.out, parsed_out.err)
    assert direct_out.out


@pytest.mark.parametrize(
    "args",
    [
        ["plugins", "--help"],
        ["--offline", "plugins"],
        ["plugins", "--json", "--json"],
        ["plugins", "--json=1"],
        ["plugins", "extra"],
        ["adapters", "list", "--family"],
        ["adapters", "list", "--family", "--json"],
        ["adapters", "list", "--family="],
        ["adapters", "list", "--bogus"],
        ["adapters", "search", "lora"],
        ["adapters"],
        ["plugin", "check"],
        [],
    ],
)
def test_anything_else_goes_to_typer(app: object, args: list[str]) -> None:
    assert fast_invoker(app, args) is None


@pytest.mark.parametrize("args", [["plugins"], ["adapters", "list"]])
def test_listing_imports_neither_typer_parser_nor_pydantic(args: list[str]) -> None:
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-X", "importtime", "-m", "refiners_core.cli", *args]
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=REPO, check=False)
    assert completed.returncode == 0, completed.stderr
    modules = {
        line.rsplit("|", 1)[1].strip() for line in completed.stderr.splitlines() if line.startswith("import time:")
    }
    assert modules, "no -X importtime output"
    assert not {module for module in modules if module.split(".")[0] in {"pydantic", "torch", "huggingface_hub"}}
