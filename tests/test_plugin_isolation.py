"""Plugin isolation and the clash rule: hanging imports, SystemExit, stdout, bad requirements, misnamed hooks."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings

import pytest
from plugin_fixtures import GOOD_PLUGIN, MakePluginDist
from test_cli import HELLO, refiners

from refiners_core.errors import PluginError
from refiners_core.plugins import RefinersPluginWarning, adapter_families, get_plugin_manager, plugin_reports

HANGS = """
import time
time.sleep(120)
"""
PRINTS = (
    GOOD_PLUGIN
    + """
print("hello from a plugin import")
"""
)
EXITS_IN_HOOK = """
from refiners_core import hookimpl

@hookimpl
def refiners_adapter_families():
    raise SystemExit(3)

@hookimpl
def refiners_register_commands(cli):
    raise SystemExit(4)
"""
MISNAMED = """
from refiners_core import AdapterFamily, hookimpl

@hookimpl
def register_adapter_families():
    return [AdapterFamily(name="misnamed", description="d", loader="x:y")]
"""
TAKES_ADAPTERS = """
import typer
from refiners_core import AdapterFamily, hookimpl

adapters = typer.Typer(help="Not the registry.")

@adapters.command("list")
def list_():
    print("hijacked")

@hookimpl
def refiners_register_commands(cli):
    cli.add_typer(adapters, name="adapters")

@hookimpl
def refiners_adapter_families():
    return [AdapterFamily(name="lora", description="not the real one", loader="x:y")]
"""


def _report(name: str) -> object:
    return next(r for r in plugin_reports() if r.name == name)


def test_hanging_plugin_import_is_bounded_and_named(make_plugin_dist: MakePluginDist) -> None:
    make_plugin_dist("refiners-hangs", HANGS)
    env = {"REFINERS_PLUGIN_IMPORT_TIMEOUT": "1"}
    start = time.perf_counter()
    version = refiners("--version", env=env)
    assert version.returncode == 0 and version.stdout.startswith("refiners-core")
    listed = refiners("plugins", "--json", env=env)
    assert time.perf_counter() - start < 60
    assert listed.returncode == 0, listed.stderr
    [hangs] = [p for p in json.loads(listed.stdout)["plugins"] if p["name"] == "hangs"]
    assert hangs["status"] == "skipped" and "did not finish within 1 s" in hangs["reason"]
    assert "refiners-hangs" in listed.stderr
    helped = refiners("--help", env=env)
    assert helped.returncode == 0 and "adapters" in helped.stdout


def test_plugin_stdout_never_reaches_json(make_plugin_dist: MakePluginDist) -> None:
    make_plugin_dist("refiners-prints", PRINTS)
    completed = refiners("plugins", "--json")
    assert completed.returncode == 0, completed.stderr
    document = json.loads(completed.stdout)
    assert any(p["name"] == "prints" and p["status"] == "loaded" for p in document["plugins"])
    assert "hello from a plugin import" in completed.stderr


def test_system_exit_in_a_hook_is_a_plugin_error(make_plugin_dist: MakePluginDist) -> None:
    make_plugin_dist("refiners-exits", EXITS_IN_HOOK)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adapter_families()
    assert any("refiners_adapter_families raised SystemExit" in str(w.message) for w in caught)
    completed = refiners("--help")
    assert completed.returncode == 0, completed.stderr
    assert "refiners_register_commands raised SystemExit" in completed.stderr
    assert "adapters" in completed.stdout


def test_unreadable_core_requirement_is_reported(make_plugin_dist: MakePluginDist) -> None:
    make_plugin_dist("refiners-badreq", requires=["refiners-core>=not a version"])
    with pytest.warns(RefinersPluginWarning, match="refiners-core>=not a version"):
        get_plugin_manager()
    report = _report("badreq")
    assert report.status == "skipped" and "unreadable requirement" in (report.reason or "")  # type: ignore[attr-defined]


def test_marked_function_with_a_non_hook_name_is_reported(make_plugin_dist: MakePluginDist) -> None:
    make_plugin_dist("refiners-misnamed", MISNAMED)
    with pytest.warns(RefinersPluginWarning) as caught:
        get_plugin_manager()
    [message] = [str(w.message) for w in caught if "refiners-misnamed" in str(w.message)]
    assert "unknown hook 'register_adapter_families'" in message
    assert "did you mean 'refiners_adapter_families'" in message


def test_third_party_plugin_never_replaces_in_tree_commands_or_families(make_plugin_dist: MakePluginDist) -> None:
    # "refiners-aaa" sorts before every in-tree distribution, which used to make it win
    make_plugin_dist("refiners-aaa", TAKES_ADAPTERS)
    completed = refiners("adapters", "list", "--json")
    assert completed.returncode == 0, completed.stderr
    assert "hijacked" not in completed.stdout
    assert isinstance(json.loads(completed.stdout), list)
    blamed = [line for line in completed.stderr.splitlines() if "already taken" in line]
    assert len(blamed) == 1 and "refiners-aaa" in blamed[0] and "'adapters'" in blamed[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        families = adapter_families()
    if "lora" in families:  # refiners-lora installed: it keeps the name
        assert families["lora"].description != "not the real one"
        [clash] = [str(w.message) for w in caught if "adapter family 'lora'" in str(w.message)]
        assert "refiners-aaa" in clash
    strict = refiners("adapters", "list", env={"REFINERS_STRICT_PLUGINS": "1"})
    assert strict.returncode == 1 and "refiners-aaa" in strict.stderr and "Traceback" not in strict.stderr


def test_strict_mode_makes_a_family_clash_an_error(make_plugin_dist: MakePluginDist, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    make_plugin_dist("refiners-one")
    make_plugin_dist("refiners-two", GOOD_PLUGIN.replace("{family}", "one"))
    monkeypatch.setenv("REFINERS_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="refiners-two"):
        get_plugin_manager().adapter_families()


def test_plugin_warnings_to_stderr_does_not_loop_on_other_warnings() -> None:
    script = (
        "import warnings\n"
        "from refiners_core.cli.app import plugin_warnings_to_stderr\n"
        "with plugin_warnings_to_stderr():\n"
        "    warnings.warn('a plain warning', UserWarning)\n"
        "print('finished')\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0 and completed.stdout.strip() == "finished"
    assert completed.stderr.count("a plain warning") == 1


def test_hello_command_still_runs_through_the_central_entry_point(make_plugin_dist: MakePluginDist) -> None:
    make_plugin_dist("refiners-hello", HELLO)
    assert refiners("hello", "world").stdout.strip() == "hello world"
    bad = refiners("hello", "world", "--nope")
    assert bad.returncode == 2 and bad.stderr.count("Error:") == 1 and "╭" not in bad.stderr


def test_plugin_messages_are_shown_without_control_characters(make_plugin_dist: MakePluginDist) -> None:
    make_plugin_dist("refiners-escapes", "raise ImportError('bad \\x1b]0;pwned\\x07 news\\nsecond line')\n")
    completed = refiners("plugins")
    assert completed.returncode == 0, completed.stderr
    shown = completed.stdout + completed.stderr
    assert "\x1b" not in shown and "\x07" not in shown
    assert "bad \\x1b]0;pwned\\x07 news second line" in completed.stdout
