"""Bad command lines through every command: the right exit code, exactly one ``Error:`` line, no traceback.

The commands run in this process through the console script's entry point (``refiners_core.cli.app.main``),
so each case costs milliseconds. ``generate`` and ``demo-assets`` have their own tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import registry_fixtures
from registry_fixtures import HubCatalog

from refiners_core.cli.app import main
from refiners_core.plugins import reset_plugin_manager

hub_server = registry_fixtures.hub_server
hub_env = registry_fixtures.hub_env
hub_catalog = registry_fixtures.hub_catalog

A_FILE = "{tmp}/a-file"
# (arguments, exit code); "{tmp}" is replaced by a temporary folder holding A_FILE
CASES: list[tuple[list[str], int]] = [
    (["--bogus"], 2),
    (["--offline", "--bogus"], 2),
    (["nope"], 2),
    (["plugins", "--bogus"], 2),
    (["plugins", "extra"], 2),
    (["plugins", "--json=yes"], 2),
    (["plugin", "new"], 2),
    (["plugin", "new", "Bad Name!"], 1),
    (["plugin", "new", "refiners-x", "--dir", A_FILE], 1),
    (["plugin", "new", "refiners-x", "--dir"], 2),
    (["plugin", "check", "{tmp}/absent"], 2),
    (["plugin", "check", "a", "b"], 2),
    (["adapters", "--bogus"], 2),
    (["adapters", "nope"], 2),
    (["adapters", "list", "--bogus"], 2),
    (["adapters", "list", "--family"], 2),
    (["adapters", "list", "extra"], 2),
    (["adapters", "list", "--installed=maybe"], 2),
    (["adapters", "search"], 2),
    (["adapters", "search", "a", "b"], 2),
    (["adapters", "info"], 2),
    (["adapters", "info", "test/nope"], 3),
    (["adapters", "info", "te\x1bst"], 3),
    (["adapters", "pull"], 2),
    (["adapters", "pull", "test/nope"], 3),
    (["adapters", "pull", "test/lora-tiny", "--revision", "main"], 1),
    (["adapters", "pull", "test/lora-tiny", "--revision"], 2),
    (["adapters", "pull", "test/lora-tiny", "--local-dir", A_FILE], 9),
    (["adapters", "pull", "test/lora-tiny", "--offline"], 6),
    (["--offline", "adapters", "pull", "test/lora-tiny", "--force"], 6),
    (["adapters", "verify", "test/nope"], 3),
    (["adapters", "verify", "test/lora-tiny"], 6),
    (["adapters", "remove"], 2),
    (["adapters", "remove", "test/nope"], 3),
    (["cache", "--bogus"], 2),
    (["cache", "nope"], 2),
    (["cache", "dir", "extra"], 2),
    (["cache", "ls", "--json", "extra"], 2),
    (["cache", "prune", "--dry-run=x"], 2),
]


@pytest.fixture(autouse=True)
def _no_import_timeout_afterwards(monkeypatch: pytest.MonkeyPatch) -> None:
    """``main`` bounds plugin imports for the rest of the process; give later tests the default back."""
    from refiners_core.plugins import manager

    monkeypatch.setattr(manager, "_import_timeout", manager._import_timeout)


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    reset_plugin_manager()
    with pytest.raises(SystemExit) as exited:
        main(args)
    out, err = capsys.readouterr()
    code = exited.value.code
    return (code if isinstance(code, int) else 1), out, err


@pytest.mark.parametrize(("args", "code"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_error_line(
    hub_catalog: HubCatalog,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    code: int,
) -> None:
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setenv("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "0"))  # `--offline` sets it: undo after
    monkeypatch.chdir(tmp_path)
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    got, out, err = _run(argv, capsys)
    errors = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert got == code, (argv, out, err)
    assert len(errors) == 1, (argv, err)
    assert "Traceback" not in err + out
    assert "╭" not in err + out and "Usage:" not in err  # no boxed usage message
    assert "\x1b" not in err
    assert (tmp_path / "a-file").read_text() == "x"


def test_unexpected_exception_in_a_command_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import refiners_core.cli.plugins_cmd as plugins_cmd

    def broken() -> list[object]:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(plugins_cmd, "plugin_reports", broken)
    got, _, err = _run(["plugins"], capsys)
    assert got == 1 and [line for line in err.splitlines() if line.startswith("Error: ")] == err.splitlines()
    assert len(err.splitlines()) == 1 and "ZeroDivisionError: boom" in err and "Traceback" not in err
