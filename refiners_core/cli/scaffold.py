"""``refiners plugin new NAME``: write a complete, installable plugin package from templates."""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import typer

TEMPLATE_PACKAGE = "refiners_core.cli.templates"
TEMPLATE_ROOT = "plugin"
PACKAGE_PLACEHOLDER = "__package__"
_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$", re.IGNORECASE)


@dataclass(frozen=True)
class PluginNames:
    """Every name derived from the plugin's distribution name.

    Attributes:
        dist: distribution name, e.g. ``refiners-scale``.
        package: import name, e.g. ``refiners_scale``.
        family: entry-point and adapter-family name, e.g. ``scale`` (``refiners-`` prefix dropped).
        class_name: the example adapter's class, e.g. ``ScaleAdapter``.
        core_requirement: the ``refiners-core`` range the plugin declares.
    """

    dist: str
    package: str
    family: str
    class_name: str
    core_requirement: str

    @classmethod
    def from_name(cls, name: str, core_version: str) -> PluginNames:
        """Derive the names from ``name``; raise ValueError when it is not a usable distribution name."""
        if not _NAME.match(name):
            raise ValueError(f"{name!r} is not a valid distribution name (letters, digits, '-', '_', '.')")
        dist = re.sub(r"[-_.]+", "-", name).lower()
        package = dist.replace("-", "_")
        family = dist.removeprefix("refiners-") or dist
        if not package.isidentifier() or keyword.iskeyword(package) or package[0].isdigit():
            raise ValueError(f"{name!r} gives the package name {package!r}, which is not a Python identifier")
        class_name = "".join(part.capitalize() for part in family.split("-")) + "Adapter"
        if not class_name.isidentifier():
            class_name = "ExampleAdapter"
        return cls(dist, package, family, class_name, core_requirement_for(core_version))

    def substitutions(self) -> dict[str, str]:
        """Placeholder -> value for the templates."""
        return {
            "{{dist}}": self.dist,
            "{{package}}": self.package,
            "{{family}}": self.family,
            "{{class_name}}": self.class_name,
            "{{core_requirement}}": self.core_requirement,
        }


def core_requirement_for(core_version: str) -> str:
    """The range a new plugin declares: this minor series of refiners-core (``>=0.1,<0.2`` for 0.1.x)."""
    major, minor = (int(part) for part in re.findall(r"\d+", core_version)[:2])
    upper = f"{major}.{minor + 1}" if major == 0 else f"{major + 1}"
    return f"refiners-core>={major}.{minor},<{upper}"


def render_plugin(names: PluginNames, destination: Path) -> list[Path]:
    """Write the plugin project into ``destination`` (must not exist or be empty); return the files written."""
    if destination.exists() and any(destination.iterdir()):
        raise FileExistsError(f"{destination} already exists and is not empty")
    written: list[Path] = []
    root = resources.files(TEMPLATE_PACKAGE).joinpath(TEMPLATE_ROOT)
    for template, relative in _walk(root, Path()):
        target = destination / Path(str(relative).replace(PACKAGE_PLACEHOLDER, names.package)).with_suffix("")
        text = template.read_text(encoding="utf-8")
        for placeholder, value in names.substitutions().items():
            text = text.replace(placeholder, value)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        written.append(target)
    return written


def _walk(node: Traversable, relative: Path) -> list[tuple[Traversable, Path]]:
    found: list[tuple[Traversable, Path]] = []
    for child in sorted(node.iterdir(), key=lambda item: item.name):
        if child.is_dir():
            found.extend(_walk(child, relative / child.name))
        elif child.name.endswith(".tmpl"):
            found.append((child, relative / child.name))
    return found


def new(
    name: str = typer.Argument(..., help="Distribution name of the plugin, e.g. refiners-scale."),
    directory: Path = typer.Option(Path("."), "--dir", help="Folder in which the project folder is created."),
) -> None:
    """Write a complete plugin package: pyproject (hatchling, entry point), hooks, example adapter, test, README."""
    from refiners_core import __version__

    try:
        names = PluginNames.from_name(name, __version__)
        destination = directory / names.dist
        files = render_plugin(names, destination)
    except (ValueError, FileExistsError) as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"Created {names.dist} in {destination} ({len(files)} files):")
    for path in files:
        typer.echo(f"  {path.relative_to(destination)}")
    typer.echo(f"Next: cd {destination} && pip install -e '.[test]' && pytest && refiners plugin check .")
