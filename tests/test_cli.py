"""The ``refiners`` command line: light paths without torch, plugin listing, plugin new / check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from plugin_fixtures import GOOD_PLUGIN, MakePluginDist

import refiners_core

REPO = Path(__file__).resolve().parents[1]

BROKEN = "raise ImportError('missing dependency: foo')\n"
MISSPELLED = """
from refiners_core import hookimpl

@hookimpl
def refiners_base_model():
    return []
"""
HELLO = """
import typer
from refiners_core import hookimpl

hello = typer.Typer(help="Say hello.")

@hello.command()
def world():
    print("hello world")

@hookimpl
def refiners_register_commands(cli):
    cli.add_typer(hello, name="hello")
"""
IMPORTS_TORCH = """
import torch
from refiners_core import hookimpl

@hookimpl
def refiners_base_models():
    return []
"""


def refiners(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """Run ``python -m refiners_core.cli ARGS`` in a fresh interpreter."""
    environment = {**os.environ, **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [environment.get("PYTHONPATH"), str(REPO)]))
    command = [sys.executable, "-m", "refiners_core.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=environment, cwd=cwd, check=False)


def torch_imports(*args: str) -> list[str]:
    """Modules named torch* that ``refiners ARGS`` imports, read from ``-X importtime``."""
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-X", "importtime", "-m", "refiners_core.cli", *args]
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=REPO, check=False)
    assert completed.returncode == 0, completed.stderr
    lines = [line for line in completed.stderr.splitlines() if line.startswith("import time:")]
    assert lines, "no -X importtime output"
    modules = [line.rsplit("|", 1)[1].strip() for line in lines]
    return [module for module in modules if module == "torch" or module.startswith("torch.")]


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["plugins"], ["plugins", "--json"], ["plugin", "--help"]])
def test_light_paths_do_not_import_torch(args: list[str]) -> None:
    assert torch_imports(*args) == []


def test_light_paths_do_not_import_torch_with_a_plugin(make_plugin_dist: MakePluginDist) -> None:
    make_plugin_dist("refiners-good")
    make_plugin_dist("refiners-hello", HELLO)
    code = (
        "import sys\nfrom refiners_core.cli.app import main\n"
        "for args in (['--help'], ['plugins'], ['hello', '--help']):\n"
        "    try:\n        main(args)\n    except SystemExit as e:\n        assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules\nprint('TORCH-FREE')\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert "TORCH-FREE" in completed.stdout, completed.stderr


def test_version() -> None:
    completed = refiners("--version")
    assert completed.returncode == 0
    assert completed.stdout.strip() == f"refiners-core {refiners_core.__version__}"


def test_help_lists_core_and_plugin_commands(make_plugin_dist: MakePluginDist) -> None:
    make_plugin_dist("refiners-hello", HELLO)
    completed = refiners("--help")
    assert completed.returncode == 0, completed.stderr
    for command in ("plugins", "plugin", "hello"):
        assert command in completed.stdout
    assert refiners("hello", "world").stdout.strip() == "hello world"


def test_plugins_json_field_by_field(make_plugin_dist: MakePluginDist) -> None:
    make_plugin_dist("refiners-good", version="1.2.3")
    make_plugin_dist("refiners-broken", BROKEN, version="0.1")
    make_plugin_dist("refiners-old", version="0.2", requires=["refiners-core<0.0.1"])
    make_plugin_dist("refiners-typo", MISSPELLED)
    make_plugin_dist("refiners-hello", HELLO)
    completed = refiners("plugins", "--json")
    assert completed.returncode == 0, completed.stderr

    document = json.loads(completed.stdout)
    assert document["core_version"] == refiners_core.__version__
    plugins = {plugin["name"]: plugin for plugin in document["plugins"]}
    fields = {
        "name",
        "entry_point",
        "distribution",
        "version",
        "status",
        "reason",
        "hooks",
        "adapter_families",
        "base_models",
        "catalog_sources",
        "commands",
        "problems",
    }
    assert all(set(plugin) == fields for plugin in document["plugins"])
    assert plugins["good"] == {
        "name": "good",
        "entry_point": "refiners_good.plugin",
        "distribution": "refiners-good",
        "version": "1.2.3",
        "status": "loaded",
        "reason": None,
        "hooks": ["refiners_adapter_families", "refiners_base_models", "refiners_catalog_entries"],
        "adapter_families": ["good"],
        "base_models": ["good-base"],
        "catalog_sources": 1,
        "commands": [],
        "problems": [],
    }
    assert plugins["hello"]["commands"] == ["hello"]
    assert plugins["hello"]["hooks"] == ["refiners_register_commands"]

    broken = plugins["broken"]
    assert (broken["distribution"], broken["version"], broken["status"]) == ("refiners-broken", "0.1", "skipped")
    assert broken["reason"] == "import failed: ImportError: missing dependency: foo"
    assert broken["hooks"] == [] and broken["adapter_families"] == []
    old = plugins["old"]
    assert (old["status"], old["version"]) == ("skipped", "0.2")
    assert old["reason"] == (
        f"requires 'refiners-core<0.0.1' but refiners-core {refiners_core.__version__} is installed"
    )
    typo = plugins["typo"]
    assert typo["status"] == "skipped"
    assert typo["reason"].startswith("unknown hook 'refiners_base_model'; did you mean 'refiners_base_models'?")

    # each skipped plugin gives exactly one warning line on stderr, stdout stays pure JSON
    warnings = [line for line in completed.stderr.splitlines() if line.startswith("refiners: warning:")]
    for dist in ("refiners-broken 0.1", "refiners-old 0.2", "refiners-typo 1.0.0"):
        assert sum(dist in line for line in warnings) == 1, completed.stderr
    assert not any("refiners-good" in line for line in warnings)


def test_plugins_text_output(make_plugin_dist: MakePluginDist) -> None:
    make_plugin_dist("refiners-good")
    make_plugin_dist("refiners-broken", BROKEN)
    completed = refiners("plugins", env={"REFINERS_LOAD_PLUGINS": "refiners-good,refiners-broken"})
    assert completed.returncode == 0, completed.stderr
    out = completed.stdout
    assert "good  [loaded]  refiners-good 1.0.0  (refiners_good.plugin)" in out
    assert "adapter families: good" in out
    assert "broken  [skipped]  refiners-broken 1.0.0" in out
    assert "reason: import failed: ImportError: missing dependency: foo" in out


def test_load_plugins_env_in_cli(make_plugin_dist: MakePluginDist) -> None:
    make_plugin_dist("refiners-good")
    make_plugin_dist("refiners-broken", BROKEN)
    completed = refiners("plugins", "--json", env={"REFINERS_LOAD_PLUGINS": "refiners-good"})
    plugins = {plugin["name"]: plugin for plugin in json.loads(completed.stdout)["plugins"]}
    assert plugins["good"]["status"] == "loaded"
    assert plugins["broken"] == {
        **plugins["broken"],
        "status": "skipped",
        "reason": "not listed in REFINERS_LOAD_PLUGINS",
    }
    assert "warning" not in completed.stderr

    completed = refiners("plugins", "--json", env={"REFINERS_LOAD_PLUGINS": ""})
    assert all(plugin["status"] == "skipped" for plugin in json.loads(completed.stdout)["plugins"])


def test_strict_mode_fails_the_cli(make_plugin_dist: MakePluginDist) -> None:
    make_plugin_dist("refiners-good")
    make_plugin_dist("refiners-broken", BROKEN)
    env = {"REFINERS_STRICT_PLUGINS": "1", "REFINERS_LOAD_PLUGINS": "refiners-good,refiners-broken"}
    completed = refiners("plugins", env=env)
    assert completed.returncode == 1
    assert completed.stderr.startswith("Error: plugin 'broken' (distribution refiners-broken 1.0.0")
    assert "Traceback" not in completed.stderr

    env["REFINERS_LOAD_PLUGINS"] = "refiners-good"
    assert refiners("plugins", env=env).returncode == 0


def test_a_plugin_whose_command_hook_raises_does_not_break_the_cli(make_plugin_dist: MakePluginDist) -> None:
    raises = """
from refiners_core import hookimpl

@hookimpl
def refiners_register_commands(cli):
    raise KeyError(1)
"""
    make_plugin_dist("refiners-raises", raises)
    completed = refiners("--help")
    assert completed.returncode == 0
    assert "refiners: warning: plugin 'raises'" in completed.stderr
    assert "refiners_register_commands raised KeyError" in completed.stderr


# -- refiners plugin new / check --------------------------------------------------------------------------


def test_plugin_new_writes_a_complete_project(tmp_path: Path) -> None:
    completed = refiners("plugin", "new", "refiners-my-scale", "--dir", str(tmp_path))
    assert completed.returncode == 0, completed.stderr
    project = tmp_path / "refiners-my-scale"
    files = sorted(str(path.relative_to(project)) for path in project.rglob("*") if path.is_file())
    assert files == [
        "README.md",
        "pyproject.toml",
        "src/refiners_my_scale/__init__.py",
        "src/refiners_my_scale/adapter.py",
        "src/refiners_my_scale/plugin.py",
        "tests/test_plugin.py",
    ]
    pyproject = (project / "pyproject.toml").read_text()
    assert 'build-backend = "hatchling.build"' in pyproject
    assert '[project.entry-points.refiners]\nmy-scale = "refiners_my_scale.plugin"' in pyproject
    assert (
        "class MyScaleAdapter(rc.Chain, rc.Adapter[rc.Linear])"
        in (project / "src/refiners_my_scale/adapter.py").read_text()
    )
    assert "{{" not in "".join((project / name).read_text() for name in files)
    lint = subprocess.run([str(REPO / ".venv/bin/ruff"), "check", "--no-cache", "."], cwd=project, capture_output=True)
    assert lint.returncode == 0, lint.stdout

    again = refiners("plugin", "new", "refiners-my-scale", "--dir", str(tmp_path))
    assert again.returncode == 1 and "already exists and is not empty" in again.stderr
    invalid = refiners("plugin", "new", "class", "--dir", str(tmp_path))
    assert invalid.returncode == 1 and "not a Python identifier" in invalid.stderr


def test_plugin_check_accepts_a_generated_project(tmp_path: Path) -> None:
    refiners("plugin", "new", "refiners-scale", "--dir", str(tmp_path))
    completed = refiners("plugin", "check", str(tmp_path / "refiners-scale"))
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "imports without torch" in completed.stdout
    assert "'scale' loader refiners_scale.adapter:load found" in completed.stdout
    assert completed.stdout.strip().endswith("0 error(s), 0 warning(s)")


def _local_project(root: Path, source: str, dependencies: str = '"refiners-core>=0.1"') -> Path:
    package = root / "src" / "refiners_local"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "plugin.py").write_text(source)
    (root / "pyproject.toml").write_text(
        '[project]\nname = "refiners-local"\nversion = "0.0.1"\n'
        f"dependencies = [{dependencies}]\n\n"
        '[project.entry-points.refiners]\nlocal = "refiners_local.plugin"\n'
    )
    return root


@pytest.mark.parametrize(
    ("source", "dependencies", "message"),
    [
        (
            MISSPELLED,
            '"refiners-core>=0.1"',
            "unknown hook 'refiners_base_model'; did you mean 'refiners_base_models'?",
        ),
        (
            GOOD_PLUGIN.format(package="refiners_local", family="local"),
            '"refiners-core<0.0.1"',
            "requires 'refiners-core<0.0.1'",
        ),
        (GOOD_PLUGIN.format(package="refiners_local", family="local"), "", "declares no requirement on refiners-core"),
        (IMPORTS_TORCH, '"refiners-core>=0.1"', "importing 'refiners_local.plugin' imports torch"),
        (BROKEN, '"refiners-core>=0.1"', "import failed: ImportError: missing dependency: foo"),
        (
            "from refiners_core import hookimpl\n\n@hookimpl\ndef refiners_register_commands(app, extra):\n    pass\n",
            '"refiners-core>=0.1"',
            "takes argument(s) 'app', 'extra' that the hook does not provide; "
            "expected signature: refiners_register_commands(cli)",
        ),
    ],
)
def test_plugin_check_reports_precise_errors(tmp_path: Path, source: str, dependencies: str, message: str) -> None:
    project = _local_project(tmp_path / "proj", source, dependencies)
    completed = refiners("plugin", "check", str(project))
    assert completed.returncode == 1, completed.stdout
    assert message in completed.stdout, completed.stdout


def test_plugin_check_flags_a_missing_loader_module(tmp_path: Path) -> None:
    project = _local_project(tmp_path / "proj", GOOD_PLUGIN.format(package="refiners_local", family="local"))
    completed = refiners("plugin", "check", str(project))
    assert completed.returncode == 1
    assert "'local': loader module 'refiners_local.impl' does not exist" in completed.stdout


def test_plugin_check_an_installed_distribution(make_plugin_dist: MakePluginDist) -> None:
    make_plugin_dist("refiners-typo", MISSPELLED)
    completed = refiners("plugin", "check", "refiners-typo")
    assert completed.returncode == 1
    assert completed.stdout.startswith("Checking refiners-typo 1.0.0 (installed)")
    assert "entry point 'typo = refiners_typo.plugin': unknown hook 'refiners_base_model'" in completed.stdout

    missing = refiners("plugin", "check", "refiners-does-not-exist")
    assert missing.returncode == 2
    assert "no installed distribution named 'refiners-does-not-exist'" in missing.stderr
