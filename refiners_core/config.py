"""Model configs: one reader for ``config.json`` and one typed conversion from a mapping to a config dataclass.

Importing this module never imports torch.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, Union

from refiners_core.errors import ConfigError

__all__ = ["config_from_dict", "read_config", "resolve_config"]

T = TypeVar("T")


def read_config(path: str | Path, what: str = "config") -> dict[str, Any]:
    """Read a JSON object from ``path``: a ``config.json`` file, or a folder holding one.

    Raises:
        ConfigError: the file is absent or unreadable, is not JSON, or does not hold a JSON object
            (the message names the file and ``what`` was looked for).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ConfigError(f"{what} not found: no {path}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read {what} {path}: {error}") from error
    if not isinstance(config, dict):
        raise ConfigError(f"{path} does not hold a JSON object (got {type(config).__name__})")
    return config


def _type_name(kind: Any) -> str:
    if typing.get_origin(kind) is not None or isinstance(kind, types.UnionType):
        return str(kind).replace("typing.", "")
    return getattr(kind, "__name__", str(kind))


def _convert(kind: Any, value: Any, name: str) -> Any:
    """``value`` as ``kind`` (int, float, str, bool, ``tuple[X, ...]``, ``X | None``, Any); ``TypeError`` if it
    does not fit."""
    origin = typing.get_origin(kind)
    if kind is Any:
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, name)
            except TypeError:
                continue
        raise TypeError
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise TypeError
        item_types = typing.get_args(kind)
        item = item_types[0] if item_types else Any
        return tuple(_convert(item, element, name) for element in value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise TypeError
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise TypeError
        return value
    if isinstance(kind, type) and isinstance(value, kind):
        return value
    raise TypeError


def config_from_dict(
    cls: type[T],
    config: Mapping[str, Any],
    *,
    source: str = "config",
    strict: bool = False,
    skip: tuple[str, ...] = (),
) -> T:
    """Build the dataclass ``cls`` from ``config``, field by field, checking each value against its annotation.

    A field absent from ``config`` (or ``null`` where its type does not allow ``None``) takes its default.
    Keys that start with ``_`` (``_class_name``, ``_diffusers_version``...) are ignored; other unknown keys
    are ignored too unless ``strict``. Fields named in ``skip`` are left to their defaults. A ``ValueError``
    raised by the dataclass itself (``__post_init__`` checks) becomes a :class:`ConfigError`.

    Raises:
        ConfigError: naming ``source`` and every unknown (with ``strict``), missing or mistyped field.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = [field for field in dataclasses.fields(cls) if field.init and field.name not in skip]
    known = {field.name for field in dataclasses.fields(cls)}
    problems: list[str] = []
    if strict:
        unknown = sorted(key for key in config if not key.startswith("_") and key not in known)
        if unknown:
            problems.append("unknown fields " + ", ".join(unknown))
    values: dict[str, Any] = {}
    missing: list[str] = []
    for field in fields:
        has_default = field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
        value = config.get(field.name)
        kind = hints.get(field.name, Any)
        allows_none = kind is Any or (
            typing.get_origin(kind) in (Union, types.UnionType) and type(None) in typing.get_args(kind)
        )
        if field.name not in config or (value is None and not allows_none):
            if not has_default:
                missing.append(field.name)
            continue
        try:
            values[field.name] = _convert(kind, value, field.name)
        except (TypeError, ValueError):
            problems.append(f"field {field.name!r} should be {_type_name(kind)}, got {value!r}")
    if missing:
        problems.insert(0, "missing fields " + ", ".join(missing))
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    try:
        return cls(**values)
    except ValueError as error:
        raise ConfigError(f"{source}: {error}") from error


def resolve_config(
    config: Any,
    cls: type[T],
    default: str | Path | Callable[[], T] | None = None,
    *,
    from_dict: Callable[[Mapping[str, Any]], T] | None = None,
    what: str = "config",
) -> T:
    """One config from what a caller may pass: an instance of ``cls`` (kept), a mapping (``from_dict``), a path
    (a ``config.json`` or its folder, read with :func:`read_config`) or ``None`` (``default``: a path, or a
    callable giving the config).

    ``from_dict`` defaults to ``cls.from_dict``.

    Raises:
        ConfigError: the file cannot be read, or ``config`` is ``None`` without a ``default``.
    """
    if isinstance(config, cls):
        return config
    build: Callable[[Mapping[str, Any]], T] = from_dict or cls.from_dict  # type: ignore[attr-defined]
    if isinstance(config, Mapping):
        return build(config)
    if config is None:
        if default is None:
            raise ConfigError(f"no {what} given")
        if callable(default):
            return default()
        config = default
    if isinstance(config, str | Path):
        return build(read_config(config, what))
    raise ConfigError(f"{what} must be a {cls.__name__}, a mapping or a path, got {type(config).__name__}")
