"""Checks shared by the plugin manager and ``refiners plugin check``. Never imports torch.

Each check returns human-readable problems (empty when fine) instead of raising, so the manager
can turn them into one warning per plugin and the checker can print all of them at once.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import PurePath
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from refiners_core.errors import RefinersWarning
from refiners_core.plugins import hookspecs
from refiners_core.plugins.descriptors import AdapterFamily, BaseModelFamily, NameResolver

CORE_DISTRIBUTION = "refiners-core"
HOOK_PREFIX = "refiners_"


class RefinersPluginWarning(RefinersWarning):
    """A plugin was skipped or one of its contributions was ignored (see the message for why)."""


def hook_specs() -> dict[str, tuple[str, ...]]:
    """Return ``{hook name: argument names}`` for every hook specification of the project."""
    specs: dict[str, tuple[str, ...]] = {}
    for name, function in vars(hookspecs).items():
        if callable(function) and hasattr(function, f"{hookspecs.PROJECT_NAME}_spec"):
            specs[name] = required_argnames(function)
    return specs


def required_argnames(function: Callable[..., Any]) -> tuple[str, ...]:
    """Names of the parameters pluggy passes to ``function`` (those without default values)."""
    parameters = inspect.signature(function).parameters.values()
    return tuple(
        p.name
        for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty
    )


_REQUIREMENT_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def unreadable_core_requirements(requires: Iterable[str] | None) -> list[str]:
    """``Requires-Dist`` lines naming ``refiners-core`` that are not valid PEP 508 (e.g. ``>=not a version``)."""
    bad: list[str] = []
    for line in requires or ():
        try:
            Requirement(line)
        except InvalidRequirement:
            match = _REQUIREMENT_NAME.match(line)
            if match and canonicalize_name(match.group(1)) == CORE_DISTRIBUTION:
                bad.append(line)
    return bad


def core_requirements(requires: Iterable[str] | None) -> list[Requirement]:
    """Return the requirements on ``refiners-core`` found in a distribution's ``Requires-Dist`` lines.

    Requirements behind an extra (``; extra == "dev"``) or a marker false here are left out.
    """
    found: list[Requirement] = []
    for line in requires or ():
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if canonicalize_name(requirement.name) != CORE_DISTRIBUTION:
            continue
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        found.append(requirement)
    return found


def requirement_problem(requires: Iterable[str] | None, core_version: str) -> str | None:
    """Say why the declared ``refiners-core`` requirement excludes ``core_version``, or return None."""
    try:
        version = Version(core_version)
    except InvalidVersion:  # a development checkout with an odd version: nothing to compare
        return None
    for line in unreadable_core_requirements(requires):
        return f"declares an unreadable requirement on {CORE_DISTRIBUTION}: {line!r} (not PEP 508)"
    for requirement in core_requirements(requires):
        if not requirement.specifier.contains(version, prereleases=True):
            return f"requires '{requirement}' but refiners-core {core_version} is installed"
    return None


def hook_problems(plugin: object) -> list[str]:
    """Check the hook functions of a plugin module (or object) against the hook specs.

    Reports every function marked with ``hookimpl`` whose name is not a hook, whatever its name (with a
    suggestion for misspellings), functions named like a hook but not marked, unmarked near-misses of a
    hook name, hook wrappers (metadata hooks are plain calls), and parameters that the hook does not provide.
    """
    specs = hook_specs()
    marker_attribute = f"{hookspecs.PROJECT_NAME}_impl"
    problems: list[str] = []
    for name in sorted(dir(plugin)):
        try:
            function = getattr(plugin, name, None)
        except Exception:  # an attribute that raises on access is nothing we can call
            continue
        if not callable(function):
            continue
        options = getattr(function, marker_attribute, None)
        if not isinstance(options, Mapping):
            if not name.startswith(HOOK_PREFIX):
                continue
            if name in specs:
                problems.append(f"'{name}' is not marked with @refiners_core.hookimpl, so it is never called")
            elif suggestion := _closest_hook(name, specs):
                problems.append(f"unknown hook '{name}' (not marked with @hookimpl); did you mean '{suggestion}'?")
            continue
        if name not in specs:
            hint = f"; did you mean '{suggestion}'?" if (suggestion := _closest_hook(name, specs, marked=True)) else ""
            problems.append(f"unknown hook '{name}'{hint} (known hooks: {', '.join(sorted(specs))})")
            continue
        if options.get("hookwrapper") or options.get("wrapper"):
            problems.append(f"hook '{name}' is declared as a wrapper; metadata hooks must be plain functions")
        try:
            argnames = required_argnames(function)
        except (TypeError, ValueError) as error:
            problems.append(f"hook '{name}' has no readable signature: {error}")
            continue
        extra = [arg for arg in argnames if arg not in specs[name]]
        if extra:
            expected = f"{name}({', '.join(specs[name])})"
            problems.append(
                f"hook '{name}' takes argument(s) {', '.join(map(repr, extra))} that the hook does not provide; "
                f"expected signature: {expected}"
            )
    return problems


def implemented_hooks(plugin: object) -> tuple[str, ...]:
    """Names of the known hooks that ``plugin`` implements with the ``hookimpl`` marker."""
    marker_attribute = f"{hookspecs.PROJECT_NAME}_impl"
    specs = hook_specs()
    return tuple(
        name for name in sorted(specs) if getattr(getattr(plugin, name, None), marker_attribute, None) is not None
    )


def contribution_problem(hook_name: str, result: Any, shape_only: bool = False) -> str | None:
    """Check the value one plugin returned from a metadata hook; return a problem or None.

    With ``shape_only`` only the container is checked, so a generator is not consumed.
    """
    expected: dict[str, tuple[type, ...]] = {
        "refiners_adapter_families": (AdapterFamily,),
        "refiners_base_models": (BaseModelFamily,),
        "refiners_catalog_entries": (str, PurePath, Mapping),
        "refiners_name_resolvers": (NameResolver,),
    }
    if hook_name not in expected or result is None:
        return None
    if isinstance(result, str | bytes) or not isinstance(result, Iterable):
        return f"{hook_name} must return an iterable, got {type(result).__name__}"
    if shape_only:
        return None
    kinds = expected[hook_name]
    for item in result:
        if not isinstance(item, kinds):
            names = " or ".join(kind.__name__ for kind in kinds)
            return f"{hook_name} returned a {type(item).__name__} where a {names} was expected"
    return None


def loader_reference_problem(reference: str) -> str | None:
    """Check the form of a ``"module:attribute"`` loader reference without importing it."""
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        return f"loader {reference!r} is not of the form 'package.module:function'"
    if not all(part.isidentifier() for part in (*module_name.split("."), *attribute.split("."))):
        return f"loader {reference!r} is not made of Python identifiers"
    return None


def _closest_hook(name: str, specs: dict[str, tuple[str, ...]], marked: bool = False) -> str | None:
    """The hook ``name`` most likely meant: compared as written and without its prefix, looser when marked."""
    cutoff = 0.6 if marked else 0.8
    matches = difflib.get_close_matches(name, list(specs), n=1, cutoff=cutoff)
    if matches:
        return matches[0]
    bare = {spec.removeprefix(HOOK_PREFIX): spec for spec in specs}
    stem = name.removeprefix(HOOK_PREFIX)
    matches = difflib.get_close_matches(stem, list(bare), n=1, cutoff=cutoff)
    return bare[matches[0]] if matches else None
