"""``refiners plugin check [PATH]``: validate an installed or local plugin before publishing it.

Checks: the distribution declares entry points of group ``refiners``; its ``refiners-core``
requirement accepts the running version; each entry point imports, without importing torch
(checked in a fresh interpreter); hook names, markers and signatures match the hook specs;
metadata hooks return well-formed descriptors whose loader modules exist.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import typer

from refiners_core.plugins.manager import ENTRY_POINT_GROUP
from refiners_core.plugins.validation import (
    contribution_problem,
    core_requirements,
    hook_problems,
    implemented_hooks,
    loader_reference_problem,
    requirement_problem,
)

Level = Literal["ok", "warning", "error"]

# Run in a fresh interpreter: import one module, report failure and whether torch came with it.
_IMPORT_PROBE = """
import json, sys, traceback
sys.path[:0] = json.loads(sys.argv[2])
result = {"error": None, "torch": False}
try:
    __import__(sys.argv[1])
except BaseException as error:
    result["error"] = f"{type(error).__name__}: {error}"
result["torch"] = "torch" in sys.modules
print(json.dumps(result))
"""


@dataclass(frozen=True)
class Finding:
    """One line of the check's output."""

    level: Level
    message: str


@dataclass
class PluginTarget:
    """What is checked: a local project or an installed distribution.

    Attributes:
        label: how the output names it.
        requires: its ``Requires-Dist`` lines (local: ``[project] dependencies``).
        entry_points: ``(name, value)`` pairs of group ``refiners``.
        import_paths: folders put in front of ``sys.path`` to import a local project.
    """

    label: str
    requires: list[str]
    entry_points: list[tuple[str, str]]
    import_paths: list[Path] = field(default_factory=list)


def target_from_project(root: Path) -> PluginTarget:
    """Read a local project's ``pyproject.toml``. Raises ValueError when it cannot be used."""
    import tomllib  # only `plugin check` reads pyproject files: kept off the CLI's start-up

    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        raise ValueError(f"{root} has no pyproject.toml")
    try:
        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{pyproject} is not valid TOML: {error}") from error
    name, version = project.get("name", "<unnamed>"), project.get("version", "<dynamic version>")
    entry_points = project.get("entry-points", {}).get(ENTRY_POINT_GROUP, {})
    import_paths = [root / "src"] if (root / "src").is_dir() else [root]
    return PluginTarget(
        label=f"{name} {version} (local project {root.resolve()})",
        requires=list(project.get("dependencies", [])),
        entry_points=sorted(entry_points.items()),
        import_paths=import_paths,
    )


def target_from_distribution(name: str) -> PluginTarget:
    """Read an installed distribution's metadata. Raises ValueError when it is not installed."""
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise ValueError(f"no local project at '{name}' and no installed distribution named '{name}'") from None
    entry_points = [(ep.name, ep.value) for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
    return PluginTarget(
        label=f"{dist.metadata['Name']} {dist.version} (installed)",
        requires=list(dist.requires or []),
        entry_points=sorted(entry_points),
    )


def run_checks(target: PluginTarget, core_version: str) -> list[Finding]:
    """Run every check on ``target`` and return the findings in order."""
    findings = list(_check_requirement(target, core_version))
    if not target.entry_points:
        findings.append(
            Finding(
                "error",
                f"declares no entry point in group '{ENTRY_POINT_GROUP}'; add to pyproject.toml: "
                f'[project.entry-points.{ENTRY_POINT_GROUP}] <name> = "<package>.plugin"',
            )
        )
    for name, value in target.entry_points:
        findings.extend(_check_entry_point(name, value, target.import_paths))
    return findings


def _check_requirement(target: PluginTarget, core_version: str) -> Iterator[Finding]:
    requirements = core_requirements(target.requires)
    if not requirements:
        yield Finding(
            "error",
            "declares no requirement on refiners-core; add e.g. 'refiners-core>=0.1,<0.2' to [project] dependencies",
        )
        return
    if problem := requirement_problem(target.requires, core_version):
        yield Finding("error", problem)
    else:
        shown = ", ".join(f"'{requirement}'" for requirement in requirements)
        yield Finding("ok", f"requirement {shown} accepts refiners-core {core_version}")


def _check_entry_point(name: str, value: str, import_paths: list[Path]) -> Iterator[Finding]:
    module_name, _, attribute = value.partition(":")
    where = f"entry point '{name} = {value}'"
    probe = _probe_import(module_name.strip(), import_paths)
    if probe["error"]:
        yield Finding("error", f"{where}: import failed: {probe['error']}")
        return
    if probe["torch"]:
        yield Finding(
            "error",
            f"{where}: importing '{module_name}' imports torch; keep plugin modules light and name heavy code "
            "with 'module:function' loader strings",
        )
    else:
        yield Finding("ok", f"{where}: imports without torch")
    with _prepended(import_paths):
        try:
            plugin: Any = importlib.import_module(module_name.strip())
            for part in filter(None, attribute.strip().split(".")):
                plugin = getattr(plugin, part)
        except Exception as error:
            yield Finding("error", f"{where}: import failed: {type(error).__name__}: {error}")
            return
        problems = hook_problems(plugin)
        for problem in problems:
            yield Finding("error", f"{where}: {problem}")
        hooks = implemented_hooks(plugin)
        if not hooks:
            yield Finding("warning", f"{where}: implements no refiners hook")
        elif not problems:
            yield Finding("ok", f"{where}: hooks {', '.join(hooks)}")
        yield from _check_contributions(where, plugin, hooks)


def _check_contributions(where: str, plugin: Any, hooks: tuple[str, ...]) -> Iterator[Finding]:
    for hook_name in ("refiners_adapter_families", "refiners_base_models", "refiners_catalog_entries"):
        if hook_name not in hooks:
            continue
        try:
            result = getattr(plugin, hook_name)()
            items = [] if result is None or contribution_problem(hook_name, result, shape_only=True) else list(result)
        except Exception as error:
            yield Finding("error", f"{where}: {hook_name}() raised {type(error).__name__}: {error}")
            continue
        if problem := contribution_problem(hook_name, result, shape_only=True) or contribution_problem(
            hook_name, items
        ):
            yield Finding("error", f"{where}: {problem}")
            continue
        for item in items:
            loader = getattr(item, "loader", None)
            if loader is None:
                continue
            if problem := loader_reference_problem(loader) or _missing_module(loader):
                yield Finding("error", f"{where}: '{item.name}': {problem}")
            else:
                yield Finding("ok", f"{where}: '{item.name}' loader {loader} found")


def _missing_module(reference: str) -> str | None:
    module_name = reference.partition(":")[0]
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError) as error:
        return f"loader module '{module_name}' cannot be located: {error}"
    return None if found is not None else f"loader module '{module_name}' does not exist"


def _probe_import(module_name: str, import_paths: list[Path]) -> dict[str, Any]:
    import subprocess  # kept off the CLI's start-up, as tomllib

    command = [sys.executable, "-c", _IMPORT_PROBE, module_name, json.dumps([str(p) for p in import_paths])]

    completed = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(), check=False)
    try:
        return json.loads(completed.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return {"error": f"the import probe crashed: {completed.stderr.strip()[-500:]}", "torch": False}


@contextmanager
def _prepended(paths: list[Path]) -> Iterator[None]:
    added = [str(path) for path in paths]
    sys.path[:0] = added
    try:
        yield
    finally:
        for entry in added:
            if entry in sys.path:
                sys.path.remove(entry)


def check(
    path: str = typer.Argument(".", help="A local plugin project folder, or the name of an installed distribution."),
) -> None:
    """Validate a plugin: imports, hook names and signatures, refiners-core requirement, no torch at import."""
    from refiners_core import __version__

    try:
        target = target_from_project(Path(path)) if Path(path).is_dir() else target_from_distribution(path)
    except ValueError as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"Checking {target.label}")
    findings = run_checks(target, __version__)
    for finding in findings:
        typer.echo(f"  {finding.level:<8}{finding.message}")
    errors = sum(finding.level == "error" for finding in findings)
    warnings_count = sum(finding.level == "warning" for finding in findings)
    typer.echo(f"{errors} error(s), {warnings_count} warning(s)")
    if errors:
        raise typer.Exit(1)
