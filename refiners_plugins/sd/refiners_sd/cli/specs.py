"""Parsing of the adapter options of ``refiners generate``: ``NAME[:SCALE]`` and ``NAME:IMAGE[:SCALE]``.

``NAME`` is a catalog name (which may contain ``/`` but never ``:``) or a local path; ``IMAGE`` is a path.
A trailing ``:SCALE`` is recognised only when it reads as a number, so ``photo:v2.png`` stays a path.
Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["AdapterSpec", "SpecError", "parse_conditioned", "parse_scaled"]


class SpecError(ValueError):
    """An adapter option that does not follow its ``NAME[:IMAGE][:SCALE]`` form."""


@dataclass(frozen=True)
class AdapterSpec:
    """One adapter asked for on the command line.

    Attributes:
        family: the adapter family (``lora``, ``controlnet``, ``t2i``, ``ip-adapter``).
        name: a catalog name or a local path, as typed.
        image: the condition or reference image (``None`` for LoRAs).
        scale: the adapter's scale.
    """

    family: str
    name: str
    image: Path | None = None
    scale: float = 1.0

    @property
    def local_path(self) -> Path | None:
        """The adapter's file or folder when ``name`` is an existing local path, else ``None``."""
        path = Path(self.name).expanduser()
        return path if path.exists() else None

    @property
    def option(self) -> str:
        """The command-line option that gives this family (``--lora``, ``--ip-adapter``...)."""
        return f"--{self.family}"


def _split_scale(text: str) -> tuple[str, float | None]:
    head, sep, tail = text.rpartition(":")
    if not sep or not head:
        return text, None
    try:
        return head, float(tail)
    except ValueError:
        return text, None


def parse_scaled(family: str, text: str) -> AdapterSpec:
    """``NAME[:SCALE]`` -> an :class:`AdapterSpec` (scale 1.0 by default)."""
    name, scale = _split_scale(text.strip())
    if not name:
        raise SpecError(f"--{family} {text!r}: expected NAME[:SCALE]")
    return AdapterSpec(family=family, name=name, scale=1.0 if scale is None else scale)


def parse_conditioned(family: str, text: str) -> AdapterSpec:
    """``NAME:IMAGE[:SCALE]`` -> an :class:`AdapterSpec`; the name ends at the first ``:``."""
    name, sep, rest = text.strip().partition(":")
    if not sep or not name or not rest:
        raise SpecError(f"--{family} {text!r}: expected NAME:IMAGE[:SCALE]")
    image, scale = _split_scale(rest)
    if not image:
        raise SpecError(f"--{family} {text!r}: expected NAME:IMAGE[:SCALE] with an image path")
    return AdapterSpec(family=family, name=name, image=Path(image).expanduser(), scale=1.0 if scale is None else scale)
