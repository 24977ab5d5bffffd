"""Where catalog entries come from, and how the sources merge.

Order: the catalog bundled in this package, then catalogs contributed by plugins through the
``refiners_catalog_entries`` hook, then the user's catalog (``$XDG_CONFIG_HOME/refiners/catalog.toml``,
by default ``~/.config/refiners/catalog.toml``) and every file named in ``REFINERS_CATALOG``
(``os.pathsep``-separated). A plugin catalog never replaces a name taken before it (the newcomer
is ignored and named in an issue); a user catalog may replace one, never silently (an issue says so).
With ``REFINERS_STRICT_PLUGINS`` set, any name clash is a :class:`CatalogError`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from refiners_registry.catalog import CatalogEntry, CatalogIssue, iter_catalog_tables, read_catalog_file
from refiners_registry.errors import CatalogError

__all__ = ["CatalogSet", "bundled_catalog_path", "collect_sources", "plugin_catalog_sources", "user_catalog_paths"]

CATALOG_ENV = "REFINERS_CATALOG"
STRICT_ENV = "REFINERS_STRICT_PLUGINS"


def bundled_catalog_path() -> Path:
    """Path of the catalog shipped inside ``refiners_registry``."""
    return Path(str(resources.files("refiners_registry").joinpath("catalog.toml")))


def user_catalog_paths(environ: Mapping[str, str] | None = None) -> list[tuple[Path, bool]]:
    """User catalog files as ``(path, required)``; the default file may be absent, named ones may not."""
    env = os.environ if environ is None else environ
    config_home = Path(env.get("XDG_CONFIG_HOME") or Path("~/.config").expanduser())
    paths: list[tuple[Path, bool]] = [(config_home / "refiners" / "catalog.toml", False)]
    for item in env.get(CATALOG_ENV, "").split(os.pathsep):
        if item.strip():
            paths.append((Path(item.strip()).expanduser(), True))
    return paths


def plugin_catalog_sources() -> list[tuple[str, Any]]:
    """Catalog sources returned by installed plugins, as ``(plugin_name, source)`` pairs."""
    from refiners_core.plugins import catalog_sources

    return list(catalog_sources())


@dataclass
class CatalogSet:
    """Entries merged over all sources, in order, with every issue met on the way."""

    entries: dict[str, CatalogEntry] = field(default_factory=dict)
    issues: list[CatalogIssue] = field(default_factory=list)

    clashes: list[CatalogIssue] = field(default_factory=list)

    def add(self, entries: Iterable[CatalogEntry], issues: Iterable[CatalogIssue] = (), replace: bool = True) -> None:
        """Merge entries from one source after the ones already there; every repeated name is reported.

        With ``replace`` (user catalogs) the newcomer shadows the earlier entry; without it (plugin
        catalogs) the earlier entry stays and the newcomer is ignored.
        """
        self.issues.extend(issues)
        for entry in entries:
            previous = self.entries.get(entry.name)
            if previous is not None:
                if replace:
                    message = f"shadows the entry of the same name from {previous.origin}"
                else:
                    message = f"ignored: the name is already taken by the entry from {previous.origin}"
                issue = CatalogIssue(entry.origin, message, entry.name)
                self.issues.append(issue)
                self.clashes.append(issue)
                if not replace:
                    continue
            self.entries[entry.name] = entry

    def add_file(self, path: Path) -> None:
        """Read one TOML catalog file and merge it."""
        self.add(*read_catalog_file(path))

    def add_plugin_source(self, plugin: str, source: Any) -> None:
        """Merge one hook result: a catalog file path or one entry mapping (a ``[[adapter]]`` table)."""
        origin = f"plugin {plugin}"
        if isinstance(source, (str, os.PathLike)):
            entries, issues = read_catalog_file(Path(source))
            issues = [CatalogIssue(f"{origin} ({i.origin})", i.message, i.name) for i in issues]
            self.add(entries, issues, replace=False)
            return
        if isinstance(source, Mapping):
            results = list(iter_catalog_tables([source], origin))
            found = [e for e, _ in results if e is not None]
            self.add(found, [i for _, i in results if i is not None], replace=False)
            return
        self.issues.append(CatalogIssue(origin, f"skipped: unsupported catalog source {type(source).__name__}"))


def collect_sources(
    *,
    bundled: bool = True,
    plugins: bool = True,
    user: bool = True,
    extra: Sequence[Path] = (),
) -> CatalogSet:
    """Load and merge every catalog source (``extra`` files come last, for tests and embedding)."""
    catalog = CatalogSet()
    bundled_path = bundled_catalog_path().resolve()
    if bundled:
        catalog.add_file(bundled_path)
    if plugins:
        for plugin, source in plugin_catalog_sources():
            # The registry's own hook returns the bundled catalog, which is already in place.
            if isinstance(source, (str, os.PathLike)) and Path(source).resolve() == bundled_path:
                continue
            catalog.add_plugin_source(plugin, source)
    if user:
        for path, required in user_catalog_paths():
            if required or path.is_file():
                catalog.add_file(path)
    for path in extra:
        catalog.add_file(Path(path))
    if catalog.clashes and _strict():
        raise CatalogError(f"catalog name clash ({STRICT_ENV} is set): {catalog.clashes[0]}")
    return catalog


def _strict() -> bool:
    from refiners_core.plugins.manager import strict_setting

    return strict_setting()
