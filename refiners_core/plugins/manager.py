"""The plugin manager: discovers entry points of group ``refiners`` one by one, isolating failures.

A plugin that cannot be used (import error, unknown or misspelled hook, wrong hook signature,
``refiners-core`` requirement excluding the running version, duplicate entry-point name) is
skipped with one :class:`RefinersPluginWarning` naming its distribution, version, entry point and
the reason; every other plugin still loads. An exception raised inside one plugin's hook is
isolated the same way: its contribution is dropped with a warning.

Clash rule: plugins load first-party distributions first (those built from this repository,
:data:`FIRST_PARTY_DISTRIBUTIONS`), then every other one by distribution name. A name taken first
(entry-point name, command, adapter family or alias, base model) is never replaced: a later plugin
reusing it has that contribution ignored, with one warning naming the newcomer. Strict mode makes
every clash an error.

Isolation: in the CLI, a plugin import that does not finish within ``REFINERS_PLUGIN_IMPORT_TIMEOUT``
seconds (default 10) is skipped and named (:func:`set_import_timeout`); what plugin imports and hooks
print on stdout goes to stderr, so it never mixes with ``--json`` output; ``SystemExit`` raised by a
plugin is a plugin error.

Environment:
    ``REFINERS_LOAD_PLUGINS``: comma-separated distribution (or entry-point) names to load; set but
        empty loads none; unset loads all.
    ``REFINERS_STRICT_PLUGINS``: ``1``/``true``/``yes``/``on`` turns every warning into a ``PluginError``.
    ``REFINERS_PLUGIN_IMPORT_TIMEOUT``: seconds one plugin import may take (default 10).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any, Literal

import pluggy
from packaging.utils import canonicalize_name

from refiners_core.errors import PluginError
from refiners_core.plugins import hookspecs
from refiners_core.plugins.descriptors import AdapterFamily, BaseModelFamily, NameResolver
from refiners_core.plugins.validation import (
    RefinersPluginWarning,
    contribution_problem,
    hook_problems,
    implemented_hooks,
    requirement_problem,
)

ENTRY_POINT_GROUP = "refiners"
LOAD_PLUGINS_ENV = "REFINERS_LOAD_PLUGINS"
STRICT_PLUGINS_ENV = "REFINERS_STRICT_PLUGINS"
IMPORT_TIMEOUT_ENV = "REFINERS_PLUGIN_IMPORT_TIMEOUT"
DEFAULT_IMPORT_TIMEOUT_S = 10.0

FIRST_PARTY_DISTRIBUTIONS = (
    "refiners-registry",
    "refiners-sd",
    "refiners-lora",
    "refiners-controlnet",
    "refiners-t2i",
    "refiners-ip-adapter",
)
"""Distributions built from this repository: they load first, so a third-party plugin cannot replace them."""

Status = Literal["loaded", "skipped"]


@dataclass(frozen=True)
class PluginReport:
    """What ``refiners plugins`` shows for one discovered plugin (one entry point of group ``refiners``).

    Attributes:
        name: entry-point name (the plugin's name in the plugin manager).
        entry_point: the entry point's value, e.g. ``refiners_lora.plugin``.
        distribution: name of the distribution declaring the entry point (None if unknown).
        version: version of that distribution (None if unknown).
        status: ``"loaded"`` or ``"skipped"``.
        reason: why it was skipped (None when loaded).
        hooks: names of the hooks the plugin implements.
        adapter_families: adapter families it contributes (kept after duplicate resolution).
        base_models: base-model families it contributes.
        catalog_sources: number of catalog sources it contributes.
        commands: CLI command groups or commands it added to ``refiners``.
        problems: warnings raised about it after loading (hook errors, ignored duplicates).
    """

    name: str
    entry_point: str
    distribution: str | None
    version: str | None
    status: Status
    reason: str | None = None
    hooks: tuple[str, ...] = ()
    adapter_families: tuple[str, ...] = ()
    base_models: tuple[str, ...] = ()
    catalog_sources: int = 0
    commands: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def loaded(self) -> bool:
        """True when the plugin is registered and its hooks are called."""
        return self.status == "loaded"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


@dataclass
class _Record:
    """Mutable bookkeeping behind a PluginReport."""

    name: str
    entry_point: str
    distribution: str | None
    version: str | None
    status: Status = "skipped"
    reason: str | None = None
    hooks: tuple[str, ...] = ()
    adapter_families: list[str] = field(default_factory=list)
    base_models: list[str] = field(default_factory=list)
    catalog_sources: int = 0
    commands: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def label(self) -> str:
        """How messages name this plugin: distribution, version and entry point."""
        dist = f"{self.distribution} {self.version}" if self.distribution else "unknown distribution"
        return f"plugin '{self.name}' (distribution {dist}, entry point '{self.name} = {self.entry_point}')"

    def report(self) -> PluginReport:
        """Freeze into a PluginReport."""
        return PluginReport(
            name=self.name,
            entry_point=self.entry_point,
            distribution=self.distribution,
            version=self.version,
            status=self.status,
            reason=self.reason,
            hooks=self.hooks,
            adapter_families=tuple(self.adapter_families),
            base_models=tuple(self.base_models),
            catalog_sources=self.catalog_sources,
            commands=tuple(self.commands),
            problems=tuple(self.problems),
        )


class RefinersPluginManager(pluggy.PluginManager):
    """A pluggy manager for project ``refiners`` that loads plugins one by one and keeps a report of each.

    Args:
        strict: raise ``PluginError`` instead of warning about a bad plugin.
    """

    def __init__(self, strict: bool = False) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self.strict = strict
        self._records: list[_Record] = []
        self._contributions: dict[str, list[tuple[str, list[Any]]]] = {}
        self._families: dict[str, AdapterFamily] | None = None
        self._base_models: dict[str, BaseModelFamily] | None = None

    # -- loading -----------------------------------------------------------------------------------

    def load_entry_points(
        self, entry_points: Iterable[metadata.EntryPoint], only: frozenset[str] | None = None
    ) -> None:
        """Load each entry point, skipping (with a warning) those that cannot be used.

        Args:
            entry_points: entry points of group ``refiners``, in discovery order.
            only: canonical distribution or entry-point names to load; None loads all.
        """
        matched: set[str] = set()
        for entry_point in entry_points:
            record = _record_for(entry_point)
            self._records.append(record)
            if only is not None:
                keys = {canonicalize_name(entry_point.name), canonicalize_name(record.distribution or "")}
                if not keys & only:
                    record.reason = f"not listed in {LOAD_PLUGINS_ENV}"
                    continue
                matched |= keys & only
            self._load_one(entry_point, record)
        for name in sorted((only or frozenset()) - matched):
            self.warn(f"{LOAD_PLUGINS_ENV} names '{name}' but no installed plugin has that distribution name")

    def _load_one(self, entry_point: metadata.EntryPoint, record: _Record) -> None:
        first = next((r for r in self._records if r.name == record.name and r.status == "loaded"), None)
        if first is not None:
            self._skip(record, f"duplicate entry-point name '{record.name}': already provided by {first.label()}")
            return
        requires = entry_point.dist.requires if entry_point.dist is not None else None
        if problem := requirement_problem(requires, _core_version()):
            self._skip(record, problem)
            return
        torch_before = "torch" in sys.modules
        try:
            plugin = _load_with_timeout(entry_point.load, _import_timeout)
        except TimeoutError as error:
            self._skip(record, f"import of '{record.entry_point}' {error}")
            return
        except (Exception, SystemExit) as error:
            self._skip(record, f"import failed: {type(error).__name__}: {error}")
            return
        imported_torch = not torch_before and "torch" in sys.modules
        record.hooks = implemented_hooks(plugin)
        if problems := hook_problems(plugin):
            self._skip(record, "; ".join(problems))
            return
        try:
            self.register(plugin, name=record.name)
        except (ValueError, pluggy.PluginValidationError) as error:
            self._skip(record, f"registration failed: {error}")
            return
        record.status = "loaded"
        if imported_torch:  # still usable, but it slows every `refiners` start
            self._problem(record, f"importing '{record.entry_point}' imports torch; plugin modules must stay light")

    def _skip(self, record: _Record, reason: str) -> None:
        record.status = "skipped"
        record.reason = reason
        self.warn(f"{record.label()} skipped: {reason}")

    def warn(self, message: str) -> None:
        """Emit one RefinersPluginWarning, or raise PluginError in strict mode."""
        if self.strict:
            raise PluginError(f"{message} ({STRICT_PLUGINS_ENV} is set)")
        warnings.warn(message, RefinersPluginWarning, stacklevel=3)

    # -- gathering contributions ---------------------------------------------------------------------

    def contributions(self, hook_name: str, **kwargs: Any) -> list[tuple[str, list[Any]]]:
        """Call ``hook_name`` on each loaded plugin separately; return ``[(plugin name, items)]``.

        A plugin whose hook raises or returns something malformed is left out with a warning.
        Metadata hooks (no arguments) are called once per manager and cached.
        """
        cached = self._contributions.get(hook_name)
        if cached is not None and not kwargs:
            return cached
        gathered: list[tuple[str, list[Any]]] = []
        for impl in getattr(self.hook, hook_name).get_hookimpls():
            record = self._record(impl.plugin_name)
            try:
                with stdout_to_stderr():
                    result = impl.function(*(kwargs[arg] for arg in impl.argnames))
                    problem = contribution_problem(hook_name, result, shape_only=True)
                    items = [] if result is None or problem else list(result)
            except (Exception, SystemExit) as error:
                self._problem(record, f"{hook_name} raised {type(error).__name__}: {error}")
                continue
            if problem := problem or contribution_problem(hook_name, items):
                self._problem(record, problem)
                continue
            gathered.append((impl.plugin_name, items))
        if not kwargs:
            self._contributions[hook_name] = gathered
        return gathered

    def adapter_families(self) -> dict[str, AdapterFamily]:
        """``{name or alias: family}`` over loaded plugins; on a clash the earlier plugin keeps the name."""
        if self._families is None:
            self._families = self._merge("refiners_adapter_families", "adapter family", with_aliases=True)
        return dict(self._families)

    def base_model_families(self) -> dict[str, BaseModelFamily]:
        """``{name: base-model family}`` over loaded plugins; on a clash the earlier plugin keeps the name."""
        if self._base_models is None:
            self._base_models = self._merge("refiners_base_models", "base-model family", with_aliases=False)
        return dict(self._base_models)

    def name_resolvers(self) -> list[NameResolver]:
        """Every :class:`NameResolver` of loaded plugins, in plugin order."""
        return [item for _, items in self.contributions("refiners_name_resolvers") for item in items]

    def catalog_sources(self) -> list[tuple[str, Any]]:
        """``[(plugin name, catalog source)]`` in plugin order."""
        sources: list[tuple[str, Any]] = []
        for plugin_name, items in self.contributions("refiners_catalog_entries"):
            self._record(plugin_name).catalog_sources = len(items)
            sources.extend((plugin_name, item) for item in items)
        return sources

    def _merge(self, hook_name: str, what: str, with_aliases: bool) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        owners: dict[str, str] = {}
        for plugin_name, items in self.contributions(hook_name):
            record = self._record(plugin_name)
            for item in items:
                names = [item.name, *(item.aliases if with_aliases else ())]
                taken = [name for name in names if name in merged]
                if taken:
                    clash = ", ".join(f"'{name}' (from plugin '{owners[name]}')" for name in taken)
                    self._problem(record, f"{what} '{item.name}' ignored: {clash} already registered")
                    continue
                for name in names:
                    merged[name] = item
                    owners[name] = plugin_name
                target = record.adapter_families if with_aliases else record.base_models
                target.append(item.name)
        return merged

    # -- CLI -----------------------------------------------------------------------------------------

    def register_commands(self, cli: Any) -> None:
        """Let each loaded plugin add commands to the typer app ``cli``, one plugin at a time.

        A plugin that raises, or that adds a command whose name is already taken, has its additions
        removed with a warning; the CLI keeps working.
        """
        for impl in self.hook.refiners_register_commands.get_hookimpls():
            record = self._record(impl.plugin_name)
            groups_before, commands_before = list(cli.registered_groups), list(cli.registered_commands)
            taken = {_group_name(g) for g in groups_before} | {_command_name(c) for c in commands_before}
            try:
                with stdout_to_stderr():
                    impl.function(*({"cli": cli}[arg] for arg in impl.argnames))
            except (Exception, SystemExit) as error:
                problem = f"refiners_register_commands raised {type(error).__name__}: {error}"
            else:
                added = [_group_name(g) for g in cli.registered_groups[len(groups_before) :]]
                added += [_command_name(c) for c in cli.registered_commands[len(commands_before) :]]
                clashes = sorted(set(added) & taken)
                if not clashes:
                    record.commands.extend(added)
                    continue
                problem = f"command name(s) {', '.join(map(repr, clashes))} already taken; its commands are ignored"
            cli.registered_groups[:] = groups_before
            cli.registered_commands[:] = commands_before
            self._problem(record, problem)

    # -- reports -------------------------------------------------------------------------------------

    def reports(self) -> list[PluginReport]:
        """One PluginReport per discovered entry point, in discovery order (gathers contributions)."""
        self.adapter_families()
        self.base_model_families()
        self.catalog_sources()
        return [record.report() for record in self._records]

    def _record(self, plugin_name: str) -> _Record:
        for record in self._records:
            if record.name == plugin_name and record.status == "loaded":
                return record
        # registered by hand (pm.register in tests or applications), not through an entry point
        record = _Record(name=plugin_name, entry_point="<registered directly>", distribution=None, version=None)
        record.status = "loaded"
        self._records.append(record)
        return record

    def _problem(self, record: _Record, problem: str) -> None:
        record.problems.append(problem)
        self.warn(f"{record.label()}: {problem}")


def _record_for(entry_point: metadata.EntryPoint) -> _Record:
    dist = entry_point.dist
    return _Record(
        name=entry_point.name,
        entry_point=entry_point.value,
        distribution=dist.metadata["Name"] if dist is not None else None,
        version=dist.version if dist is not None else None,
    )


def _group_name(group: Any) -> str:
    name = group.name or (group.typer_instance.info.name if group.typer_instance is not None else None)
    return str(name or "<unnamed group>")


def _command_name(command: Any) -> str:
    if command.name:
        return str(command.name)
    callback = command.callback
    return callback.__name__.lower().replace("_", "-") if callback is not None else "<unnamed command>"


def _core_version() -> str:
    from refiners_core import __version__

    return __version__


def load_plugins_setting() -> frozenset[str] | None:
    """Canonical names listed in ``REFINERS_LOAD_PLUGINS``; None when the variable is unset."""
    value = os.environ.get(LOAD_PLUGINS_ENV)
    if value is None:
        return None
    return frozenset(canonicalize_name(name.strip()) for name in value.split(",") if name.strip())


def strict_setting() -> bool:
    """Whether ``REFINERS_STRICT_PLUGINS`` asks for errors instead of warnings."""
    return os.environ.get(STRICT_PLUGINS_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def discover_entry_points() -> list[metadata.EntryPoint]:
    """Entry points of group ``refiners``: first-party distributions first, then the others by name.

    The order decides who keeps a name when two plugins claim it (the earlier one); it is the same on
    every machine, and a third-party plugin always comes after the distributions of this repository.
    """
    found = metadata.entry_points(group=ENTRY_POINT_GROUP)
    first_party = {name: index for index, name in enumerate(FIRST_PARTY_DISTRIBUTIONS)}

    def key(entry_point: metadata.EntryPoint) -> tuple[int, str, str]:
        dist = entry_point.dist
        name = canonicalize_name(dist.metadata["Name"] or "") if dist is not None else ""
        return (first_party.get(name, len(first_party)), name, entry_point.name)

    return sorted(found, key=key)


_import_timeout: float | None = None


def set_import_timeout(seconds: float | None) -> None:
    """Bound each plugin import to ``seconds`` from now on (None: no bound; the CLI sets it).

    Off by default in Python: a bounded import runs in a thread, which would wait for ever on a
    module that the calling thread is itself importing.
    """
    global _import_timeout
    _import_timeout = seconds


def import_timeout_setting() -> float:
    """Seconds one plugin import may take (``REFINERS_PLUGIN_IMPORT_TIMEOUT``, default 10; <= 0: no limit)."""
    value = os.environ.get(IMPORT_TIMEOUT_ENV, "").strip()
    try:
        return float(value) if value else DEFAULT_IMPORT_TIMEOUT_S
    except ValueError:
        return DEFAULT_IMPORT_TIMEOUT_S


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send what plugin code prints on stdout to stderr (keeps ``--json`` output clean)."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _load_with_timeout(load: Callable[[], Any], timeout: float | None) -> Any:
    """Run ``load`` (a plugin import) with stdout sent to stderr, giving up after ``timeout`` seconds.

    The import runs in a daemon thread: one that hangs is left behind and never blocks the process exit.

    Raises:
        TimeoutError: the import did not finish in time.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = load()
        except BaseException as error:  # handed to the caller below
            outcome["error"] = error

    with stdout_to_stderr():
        if timeout is None or timeout <= 0:
            run()
        else:
            thread = threading.Thread(target=run, name="refiners-plugin-import", daemon=True)
            thread.start()
            thread.join(timeout)
            if thread.is_alive():
                raise TimeoutError(f"did not finish within {timeout:g} s (hangs?; {IMPORT_TIMEOUT_ENV})")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


_lock = threading.RLock()
_manager: RefinersPluginManager | None = None


def get_plugin_manager() -> RefinersPluginManager:
    """Return the process-wide manager, discovering and loading plugins on first call.

    Raises:
        PluginError: in strict mode, on the first plugin problem (nothing is cached then).
    """
    global _manager
    with _lock:
        if _manager is None:
            manager = RefinersPluginManager(strict=strict_setting())
            manager.load_entry_points(discover_entry_points(), only=load_plugins_setting())
            _manager = manager
        return _manager


def reset_plugin_manager() -> None:
    """Forget the process-wide manager; the next call rediscovers entry points and rereads the environment."""
    global _manager
    with _lock:
        _manager = None


def adapter_families() -> dict[str, AdapterFamily]:
    """``{name or alias: AdapterFamily}`` merged over loaded plugins (the earlier plugin keeps a clashing name)."""
    return get_plugin_manager().adapter_families()


def base_model_families() -> dict[str, BaseModelFamily]:
    """``{name: BaseModelFamily}`` merged over loaded plugins (the earlier plugin keeps a clashing name)."""
    return get_plugin_manager().base_model_families()


def name_resolvers() -> list[NameResolver]:
    """Every name resolver of loaded plugins (the registry's catalog, ...), in plugin order."""
    return get_plugin_manager().name_resolvers()


def catalog_sources() -> list[tuple[str, Any]]:
    """Every catalog source from ``refiners_catalog_entries``, as ``(plugin name, source)`` pairs."""
    return get_plugin_manager().catalog_sources()


def plugin_reports() -> list[PluginReport]:
    """One PluginReport per discovered plugin entry point, in discovery order."""
    return get_plugin_manager().reports()


def register_commands(cli: Any) -> None:
    """Let every loaded plugin add its command groups to the typer app ``cli`` (isolated per plugin)."""
    get_plugin_manager().register_commands(cli)
