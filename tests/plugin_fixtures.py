"""Build real plugin distributions in a temporary folder, for tests of the plugin system and its users.

``write_plugin_dist`` writes a package and a ``NAME-VERSION.dist-info`` folder (``METADATA`` with
``Requires-Dist`` lines, ``entry_points.txt``) so that ``importlib.metadata`` discovers it exactly
like an installed distribution. The ``make_plugin_dist`` fixture (see ``tests/conftest.py``) wraps
it: it puts the folder on ``sys.path`` and ``PYTHONPATH`` (for subprocess CLI tests), clears
``REFINERS_LOAD_PLUGINS`` / ``REFINERS_STRICT_PLUGINS``, resets the plugin manager, and at
teardown forgets the imported plugin modules. Example, for a family plugin::

    def test_my_family(make_plugin_dist):
        make_plugin_dist(
            "refiners-foo",
            '''
            from refiners_core import AdapterFamily, hookimpl

            @hookimpl
            def refiners_adapter_families():
                return [AdapterFamily(name="foo", description="d", loader="foo_impl:load")]
            ''',
            extra_modules={"foo_impl": "def load(model, weights, **options): ..."},
        )
        assert "foo" in refiners_core.plugins.adapter_families()
"""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from refiners_core.plugins import reset_plugin_manager

GOOD_PLUGIN = """
from refiners_core import AdapterFamily, BaseModelFamily, hookimpl


@hookimpl
def refiners_adapter_families():
    return [
        AdapterFamily(
            name="{family}",
            description="a test family",
            loader="{package}.impl:load",
            formats=("diffusers",),
            base_models=("sd15",),
            aliases=("{family}-alias",),
        )
    ]


@hookimpl
def refiners_base_models():
    return [BaseModelFamily(name="{family}-base", description="a test base model", loader="{package}.impl:build")]


@hookimpl
def refiners_catalog_entries():
    return [{{"name": "{family}-entry", "family": "{family}"}}]
"""


@dataclass(frozen=True)
class PluginDist:
    """A plugin distribution written by ``write_plugin_dist``."""

    root: Path
    dist: str
    version: str
    package: str
    entry_points: Mapping[str, str]
    dist_info: Path


def write_plugin_dist(
    root: Path,
    dist: str,
    source: str = GOOD_PLUGIN,
    *,
    version: str = "1.0.0",
    requires: Sequence[str] = ("refiners-core>=0.1",),
    entry_points: Mapping[str, str] | None = None,
    extra_modules: Mapping[str, str] | None = None,
) -> PluginDist:
    """Write package ``<dist with _>`` (its ``plugin.py`` is ``source``) and its dist-info into ``root``.

    Args:
        root: a folder that is (or will be) on ``sys.path``.
        dist: distribution name, e.g. ``refiners-foo``; the package is ``refiners_foo``.
        source: text of ``<package>/plugin.py`` (dedented); ``{package}`` and ``{family}`` are
            substituted (family: dist without the ``refiners-`` prefix), so use ``{{``/``}}`` for braces.
        version: distribution version.
        requires: ``Requires-Dist`` lines.
        entry_points: ``{name: value}`` of group ``refiners``; default ``{family: "<package>.plugin"}``.
        extra_modules: ``{dotted module name: source}`` written as files under ``root`` too
            (``"<package>.impl"`` lands in the package).
    """
    package = dist.replace("-", "_").replace(".", "_")
    family = dist.removeprefix("refiners-")
    package_dir = root / package
    package_dir.mkdir(parents=True, exist_ok=True)
    (package_dir / "__init__.py").write_text("", encoding="utf-8")
    text = textwrap.dedent(source).format(package=package, family=family)
    (package_dir / "plugin.py").write_text(text, encoding="utf-8")
    for module_name, module_source in (extra_modules or {}).items():
        path = root.joinpath(*module_name.split(".")).with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(module_source), encoding="utf-8")
    entry_points = dict(entry_points) if entry_points is not None else {family: f"{package}.plugin"}
    dist_info = root / f"{package}-{version}.dist-info"
    dist_info.mkdir(exist_ok=True)
    metadata_lines = ["Metadata-Version: 2.1", f"Name: {dist}", f"Version: {version}"]
    metadata_lines += [f"Requires-Dist: {requirement}" for requirement in requires]
    (dist_info / "METADATA").write_text("\n".join(metadata_lines) + "\n", encoding="utf-8")
    lines = ["[refiners]", *(f"{name} = {value}" for name, value in entry_points.items())]
    (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    importlib.invalidate_caches()
    return PluginDist(root, dist, version, package, entry_points, dist_info)


MakePluginDist = Callable[..., PluginDist]


@pytest.fixture
def make_plugin_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakePluginDist]:
    """Return ``make(dist, source=GOOD_PLUGIN, **kwargs) -> PluginDist`` (see ``write_plugin_dist``).

    Every distribution lands in one ``site`` folder of ``tmp_path``, put first on ``sys.path`` and
    ``PYTHONPATH``; the plugin manager is reset before the test, after each ``make`` call and at
    teardown; plugin-selection variables are cleared.
    """
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    monkeypatch.delenv("REFINERS_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("REFINERS_STRICT_PLUGINS", raising=False)
    reset_plugin_manager()
    made: list[PluginDist] = []

    def make(dist: str, source: str = GOOD_PLUGIN, **kwargs: object) -> PluginDist:
        plugin = write_plugin_dist(site, dist, source, **kwargs)  # type: ignore[arg-type]
        made.append(plugin)
        reset_plugin_manager()
        return plugin

    yield make
    reset_plugin_manager()
    for plugin in made:
        for name in [name for name in sys.modules if name == plugin.package or name.startswith(plugin.package + ".")]:
            del sys.modules[name]
    importlib.invalidate_caches()
