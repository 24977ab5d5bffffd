"""Parsing of ``refiners generate``'s adapter options, for any installed family (no torch, no family named).

``--adapter FAMILY:NAME[:IMAGE][:SCALE]`` and, for every installed family and alias, ``--FAMILY NAME[:IMAGE][:SCALE]``
(``--lora``, ``--controlnet``...). ``NAME`` is a catalog name (which may contain ``/`` but never ``:``) or a local
path; ``IMAGE`` is a path. A trailing ``:SCALE`` is recognised only when it reads as a number, so ``photo:v2.png``
stays a path; an existing local path is never split. Families' extra inputs (``AdapterFamily.inputs``) come as
``--input NAME=VALUE`` or ``--NAME VALUE`` with ``-`` for ``_`` (``--image-encoder``).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from refiners_core.errors import RefinersError
from refiners_core.plugins.descriptors import AdapterFamily

__all__ = ["AdapterSpec", "GenerateArguments", "SpecError", "parse_adapter_option", "parse_arguments", "split_spec"]


class SpecError(RefinersError):
    """An option of ``refiners generate`` that does not follow its form, or names no installed family."""


class UnknownFamilyOptionError(SpecError):
    """``--NAME`` where no installed plugin provides the family ``NAME`` (exit code 4, like a missing plugin)."""

    exit_code = 4


@dataclass(frozen=True)
class AdapterSpec:
    """One adapter asked for on the command line.

    Attributes:
        family: the family's name (aliases resolved).
        name: a catalog name or a local path, as typed.
        image: the condition or reference image, if given.
        scale: the adapter's scale.
        option: the option as typed (``--lora``, ``--adapter``), for messages.
    """

    family: str
    name: str
    image: Path | None = None
    scale: float = 1.0
    option: str = "--adapter"


@dataclass
class GenerateArguments:
    """What the free-form part of ``refiners generate``'s command line holds."""

    prompt: str
    adapters: list[AdapterSpec] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)
    base_inputs: dict[str, str] = field(default_factory=dict)


def _split_scale(text: str) -> tuple[str, float | None]:
    head, sep, tail = text.rpartition(":")
    if not sep or not head:
        return text, None
    try:
        return head, float(tail)
    except ValueError:
        return text, None


def split_spec(text: str) -> tuple[str, Path | None, float | None]:
    """``NAME[:IMAGE][:SCALE]`` -> ``(name, image, scale)``; the name ends at the first ``:`` unless it is an
    existing path."""
    rest, scale = _split_scale(text.strip())
    if ":" not in rest or Path(rest).expanduser().exists():
        return rest, None, scale
    name, _, image = rest.partition(":")
    return name, Path(image).expanduser() if image else None, scale


def parse_adapter_option(option: str, family: AdapterFamily, text: str) -> AdapterSpec:
    """``NAME[:IMAGE][:SCALE]`` of ``family`` -> an :class:`AdapterSpec`."""
    name, image, scale = split_spec(text)
    if not name:
        raise SpecError(f"{option} {text!r}: expected NAME[:IMAGE][:SCALE]")
    if scale is not None and not math.isfinite(scale):
        raise SpecError(f"{option} {text!r}: the scale must be a finite number, got {scale}")
    return AdapterSpec(family.name, name, image, 1.0 if scale is None else scale, option)


def _family_options(families: Mapping[str, AdapterFamily]) -> dict[str, AdapterFamily]:
    return {f"--{name}": family for name, family in families.items()}


def _input_options(families: Mapping[str, AdapterFamily]) -> dict[str, str]:
    return {f"--{name.replace('_', '-')}": name for family in families.values() for name in family.inputs}


def parse_arguments(
    tokens: Sequence[str],
    adapters: Sequence[str],
    inputs: Sequence[str],
    families: Mapping[str, AdapterFamily],
    base_inputs: Collection[str] = (),
) -> GenerateArguments:
    """The prompt, adapters and inputs of ``refiners generate`` from its free-form tokens (the prompt and any
    ``--FAMILY SPEC`` / ``--INPUT VALUE``), its ``--adapter`` values and its ``--input`` values.

    ``base_inputs`` are the model inputs base-model families declare (``vae``): ``--vae VALUE`` (or
    ``--input vae=VALUE``) goes to :attr:`GenerateArguments.base_inputs`.

    Raises:
        SpecError: a malformed value, an unknown option, a missing or repeated prompt.
    """
    family_options = _family_options(families)
    input_options = _input_options(families)
    input_options.update({f"--{name.replace('_', '-')}": name for name in base_inputs})
    specs: list[AdapterSpec] = []
    given: dict[str, str] = {}
    positionals: list[str] = []
    items = list(tokens)
    index = 0
    while index < len(items):
        token = items[index]
        index += 1
        if not token.startswith("--"):
            positionals.append(token)
            continue
        option, eq, value = token.partition("=")
        if option not in family_options and option not in input_options:
            installed = ", ".join(sorted({family.name for family in families.values()})) or "none"
            raise UnknownFamilyOptionError(
                f"no such option: {option} (no installed plugin provides the adapter family "
                f"{option.removeprefix('--')!r}; installed: {installed})"
            )
        if not eq:
            if index >= len(items):
                raise SpecError(f"{option} needs a value")
            value = items[index]
            index += 1
        if option in family_options:
            specs.append(parse_adapter_option(option, family_options[option], value))
        else:
            given[input_options[option]] = value
    for text in adapters:
        family_name, sep, rest = text.partition(":")
        if not sep or not family_name or not rest:
            raise SpecError(f"--adapter {text!r}: expected FAMILY:NAME_OR_PATH[:IMAGE][:SCALE]")
        if family_name not in families:
            installed = ", ".join(sorted({family.name for family in families.values()})) or "none"
            raise UnknownFamilyOptionError(
                f"--adapter {text}: no installed plugin provides the adapter family {family_name!r} "
                f"(installed: {installed})"
            )
        specs.append(parse_adapter_option("--adapter", families[family_name], rest))
    for text in inputs:
        name, sep, value = text.partition("=")
        if not sep or not name or not value:
            raise SpecError(f"--input {text!r}: expected NAME=VALUE (e.g. image_encoder=PATH)")
        given[name.replace("-", "_")] = value
    if len(positionals) != 1:
        what = "a prompt is needed" if not positionals else f"one prompt expected, got {len(positionals)}"
        raise SpecError(f"{what}: refiners generate PROMPT --base BASE [options] ({' '.join(positionals)})")
    base_given = {name: given.pop(name) for name in list(given) if name in base_inputs}
    return GenerateArguments(prompt=positionals[0], adapters=specs, inputs=given, base_inputs=base_given)
