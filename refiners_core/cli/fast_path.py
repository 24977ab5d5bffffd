"""A direct route to the listing commands, ``refiners plugins`` and ``refiners adapters list``.

typer 0.2x builds a pydantic ``TypeAdapter`` for every non-flag parameter it parses (including the
``--help`` option left unset), so parsing any command line imports pydantic: most of the start-up
time of a listing. For the command paths in :data:`FAST_PATHS` only, :func:`fast_invoker` reads
the command line itself and returns a call of the *same* callbacks typer would run (the group
callbacks with their defaults, then the command), found in the app after the plugins registered
their commands. It understands only: the command path first, then flags (``--json``) and string
options (``--family X`` / ``--family=X``) declared by the command, each at most once. Anything else
(``--help``, a root option, an argument, an unknown or repeated option, a value that looks like an
option, a parameter of any other kind) returns None, and typer parses the command line as usual.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from refiners_core.plugins.manager import _command_name, _group_name

FAST_PATHS: frozenset[tuple[str, ...]] = frozenset({("plugins",), ("adapters", "list")})


def fast_invoker(app: Any, args: Sequence[str]) -> Callable[[], Any] | None:
    """A call running ``args`` on the typer ``app`` without typer's parser, or None to let typer parse."""
    path = next((p for p in FAST_PATHS if tuple(args[: len(p)]) == p), None)
    if path is None:
        return None
    callbacks = []
    node = app
    for name in path[:-1]:
        group = next((g for g in reversed(node.registered_groups) if _group_name(g) == name), None)
        if group is None or _set(group.callback) or group.typer_instance is None:
            return None
        callbacks.append(node.registered_callback)
        node = group.typer_instance
    callbacks.append(node.registered_callback)
    command = next((c for c in reversed(node.registered_commands) if _command_name(c) == path[-1]), None)
    if command is None or command.callback is None:
        return None
    calls = [_call(info.callback, ()) for info in callbacks if info is not None and info.callback is not None]
    calls.append(_call(command.callback, args[len(path) :]))
    if any(call is None for call in calls):
        return None

    def invoke() -> Any:
        import typer

        try:
            result = None
            for call in calls:
                result = call()  # type: ignore[misc]
            return result
        except typer.Exit as stop:  # as typer does without standalone mode: the exit code is the result
            return stop.exit_code
        except KeyboardInterrupt:
            return 130

    return invoke


def _call(function: Callable[..., Any], args: Sequence[str]) -> Callable[[], Any] | None:
    """``function`` bound to the values ``args`` gives its options (defaults elsewhere), or None if not understood."""
    import typer.models
    import typer.utils

    try:  # typer's own reading of the signature (annotations, Annotated[...] and default styles)
        parameters = typer.utils.get_params_from_function(function)
    except Exception:
        return None
    by_name: dict[str, tuple[str, bool]] = {}  # option name -> (parameter, is a flag)
    values: dict[str, Any] = {}
    checks: list[tuple[Callable[[Any], Any], str]] = []
    for name, parameter in parameters.items():
        info, hint = parameter.default, parameter.annotation
        if not isinstance(info, typer.models.OptionInfo) or info.envvar is not None or info.prompt:
            return None
        if info.callback is not None:  # typer calls it with the value; understood here for one-argument callbacks
            if args or len(inspect.signature(info.callback).parameters) != 1:
                return None
            checks.append((info.callback, name))
        default = info.default
        decls = info.param_decls or ()
        names = [decl for decl in decls if decl.startswith("--")] or ["--" + name.replace("_", "-")]
        if len(names) != len(decls or names) or any("/" in option for option in names):
            return None
        if hint is bool and default is False:
            flag = True
        elif hint in (str, str | None) and (default is None or isinstance(default, str)):
            flag = False
        else:
            return None
        values[name] = default
        by_name.update((option, (name, flag)) for option in names)
    given: set[str] = set()
    rest = list(args)
    while rest:
        token = rest.pop(0)
        option, equals, value = token.partition("=")
        if option not in by_name:
            return None
        target, flag = by_name[option]
        if target in given or (flag and equals):
            return None
        given.add(target)
        if flag:
            values[target] = True
            continue
        if not equals:
            if not rest:
                return None
            value = rest.pop(0)
        if not value or value.startswith("-"):
            return None
        values[target] = value

    def call() -> Any:
        for check, name in checks:
            check(values[name])
        return function(**values)

    return call


def _set(value: Any) -> bool:
    """Whether a typer setting was given (typer marks those left unset with a ``DefaultPlaceholder``)."""
    import typer.models

    return value is not None and not isinstance(value, typer.models.DefaultPlaceholder)
