"""Untrusted catalog text: unreadable user catalogs, BOMs, terminal escapes, and the 80-column listing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import registry_fixtures
from hub_fixtures import catalog_text
from registry_fixtures import HubCatalog, run_cli

from refiners_core.text import printable

hub_server = registry_fixtures.hub_server
hub_env = registry_fixtures.hub_env
hub_catalog = registry_fixtures.hub_catalog


def _user_catalog(hub: HubCatalog) -> Path:
    path = Path(hub.env["XDG_CONFIG_HOME"]) / "refiners" / "catalog.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'[[adapter]]\nname = "caf\xe9"\n', "not UTF-8"),
        (b"x = " + b"[" * 50_000 + b"]" * 50_000 + b"\n", "nested too deeply"),
        (b"x = " + b"{a = " * 5_000 + b"1" + b"}" * 5_000 + b"\n", "nested too deeply"),
        (b"[[adapter]\nname = ", "invalid TOML"),
    ],
    ids=["invalid-utf8", "deep-arrays", "deep-tables", "bad-toml"],
)
def test_unreadable_user_catalog_is_one_warning(hub_catalog: HubCatalog, content: bytes, message: str) -> None:
    user = _user_catalog(hub_catalog)
    user.write_bytes(content)
    for args in (
        ["adapters", "list", "--json"],
        ["adapters", "info", "test/lora-tiny"],
        ["adapters", "pull", "test/lora-tiny"],
    ):
        done = run_cli(hub_catalog.env, *args)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        warned = [line for line in done.stderr.splitlines() if "warning" in line]
        assert len(warned) == 1 and str(user) in warned[0] and message in warned[0], done.stderr
    listed = run_cli(hub_catalog.env, "adapters", "list", "--json")
    assert "test/lora-tiny" in [e["name"] for e in json.loads(listed.stdout)]


def test_utf8_bom_is_accepted(hub_catalog: HubCatalog) -> None:
    user = _user_catalog(hub_catalog)
    entry = hub_catalog.entry("test/lora-tiny", name="test/with-bom", description="café au lait")
    user.write_bytes(b"\xef\xbb\xbf" + catalog_text([entry]).encode("utf-8"))
    done = run_cli(hub_catalog.env, "adapters", "info", "test/with-bom")
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
    assert "café au lait" in done.stdout


def test_control_characters_never_reach_the_terminal(hub_catalog: HubCatalog) -> None:
    hostile = hub_catalog.entry(
        "test/lora-tiny",
        name="test/hostile",
        description="nice \x1b]0;pwned\x07 \x1b[2J adapter \u202eevil",
        license="mit\x1b[31m",
        tags=["ok", "line\nbreak", "\x9bcsi"],
    )
    user = _user_catalog(hub_catalog)
    user.write_text(catalog_text([hostile]), encoding="utf-8")
    for args in (["adapters", "info", "test/hostile"], ["adapters", "list"], ["adapters", "search", "nice"]):
        done = run_cli(hub_catalog.env, *args)
        assert done.returncode == 0, done.stderr
        shown = done.stdout + done.stderr
        for raw in ("\x1b", "\x07", "\x9b", "\u202e"):
            assert raw not in shown, (args, shown)
        assert "test/hostile" in done.stdout
    info = run_cli(hub_catalog.env, "adapters", "info", "test/hostile").stdout
    assert "\\x1b]0;pwned\\x07" in info and "line break" in info
    as_json = run_cli(hub_catalog.env, "adapters", "info", "test/hostile", "--json")
    assert json.loads(as_json.stdout)["description"].startswith("nice \x1b]0;pwned")  # JSON keeps the data, escaped


def test_printable_keeps_ordinary_text() -> None:
    assert printable("Stable Diffusion 1.5 — café, 日本語") == "Stable Diffusion 1.5 — café, 日本語"
    assert printable("a\r\nb\tc\x00") == "a b\\x09c\\x00"


def test_list_fits_80_columns_and_shows_sizes(hub_catalog: HubCatalog) -> None:
    entry = hub_catalog.entry("test/lora-tiny", name="test/long", description="word " * 40)
    user = _user_catalog(hub_catalog)
    user.write_text(catalog_text([entry]), encoding="utf-8")
    env = dict(hub_catalog.env, COLUMNS="80")
    done = run_cli(env, "adapters", "list")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    [row] = [line for line in lines if line.startswith("test/long ")]
    size = len(hub_catalog.files["test/lora-tiny"])
    assert f"{size / 1024:.1f} KiB" in row and row.endswith("…")
    assert len(lines) == 1 + len(json.loads(run_cli(env, "adapters", "list", "--json").stdout))
