"""T2IConfig: the shape of a T2I-Adapter network, read from a diffusers ``config.json`` or inferred from weights.

A T2I-Adapter turns a condition image ``[B, in_channels, H, W]`` into one feature map per level. The
three variants differ in where they halve the resolution:

- ``full_adapter`` (SD1.x): level 0 at ``1/downscale_factor`` of the image, each next level halves it.
- ``full_adapter_xl`` (SDXL): levels 0 and 1 at ``1/downscale_factor``, levels 2 and above at half that.
- ``light_adapter``: like ``full_adapter``, with one more level at the end (``len(channels) + 1`` features).

Importing this module never imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from refiners_core.config import config_from_dict
from refiners_core.errors import WeightsError

__all__ = ["ADAPTER_TYPES", "LevelSpec", "T2IConfig", "infer_config", "split_input_channels"]

ADAPTER_TYPES = ("full_adapter", "full_adapter_xl", "light_adapter")


class LevelSpec(NamedTuple):
    """One level of the adapter network: its input and output channels, and whether it halves the resolution."""

    in_channels: int
    out_channels: int
    down: bool


@dataclass(frozen=True)
class T2IConfig:
    """The fields of a diffusers ``T2IAdapter`` config (same names, same defaults)."""

    adapter_type: str = "full_adapter"
    in_channels: int = 3
    channels: tuple[int, ...] = (320, 640, 1280, 1280)
    num_res_blocks: int = 2
    downscale_factor: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        problems = []
        if self.adapter_type not in ADAPTER_TYPES:
            problems.append(f"adapter_type {self.adapter_type!r} is not one of {', '.join(ADAPTER_TYPES)}")
        if not self.channels or any(c <= 0 for c in self.channels):
            problems.append(f"channels {self.channels} must be a non-empty list of positive ints")
        if self.in_channels <= 0 or self.num_res_blocks < 0 or self.downscale_factor <= 0:
            problems.append("in_channels and downscale_factor must be positive, num_res_blocks non-negative")
        if self.adapter_type == "light_adapter" and any(c % 4 for c in self.channels):
            problems.append(f"light_adapter channels {self.channels} must be multiples of 4")
        if self.adapter_type == "full_adapter_xl":
            # levels 3+ take and give channels[i]: the previous level must already have that width
            for i in range(3, len(self.channels)):
                if self.channels[i] != self.channels[i - 1]:
                    problems.append(f"full_adapter_xl needs channels[{i}] == channels[{i - 1}], got {self.channels}")
        if problems:
            raise ValueError("invalid T2I-Adapter config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> T2IConfig:
        """Read a diffusers ``T2IAdapter`` config (missing fields take diffusers' defaults).

        Raises:
            ConfigError: a mistyped field, or values that make no adapter (each named).
        """
        return config_from_dict(cls, config, source="T2I-Adapter config")

    def to_dict(self) -> dict[str, Any]:
        """The diffusers ``config.json`` fields."""
        return {
            "_class_name": "T2IAdapter",
            "adapter_type": self.adapter_type,
            "in_channels": self.in_channels,
            "channels": list(self.channels),
            "num_res_blocks": self.num_res_blocks,
            "downscale_factor": self.downscale_factor,
        }

    @property
    def is_light(self) -> bool:
        """Whether this is a ``light_adapter`` (no ``conv_in``; bottleneck levels with ``in_conv``/``out_conv``)."""
        return self.adapter_type == "light_adapter"

    @property
    def unshuffled_channels(self) -> int:
        """Channels after the pixel unshuffle: ``in_channels * downscale_factor ** 2``."""
        return self.in_channels * self.downscale_factor**2

    def levels(self) -> list[LevelSpec]:
        """The levels in order; level ``i`` produces feature ``i``."""
        c = self.channels
        if self.adapter_type == "full_adapter":
            return [LevelSpec(c[0], c[0], False)] + [LevelSpec(c[i - 1], c[i], True) for i in range(1, len(c))]
        if self.adapter_type == "full_adapter_xl":
            specs = []
            for i in range(len(c)):
                if i == 1:
                    specs.append(LevelSpec(c[0], c[1], False))
                elif i == 2:
                    specs.append(LevelSpec(c[1], c[2], True))
                else:
                    specs.append(LevelSpec(c[i], c[i], False))
            return specs
        return (
            [LevelSpec(self.unshuffled_channels, c[0], False)]
            + [LevelSpec(c[i], c[i + 1], True) for i in range(len(c) - 1)]
            + [LevelSpec(c[-1], c[-1], True)]
        )

    @property
    def feature_channels(self) -> tuple[int, ...]:
        """Channels of each feature map."""
        return tuple(level.out_channels for level in self.levels())

    @property
    def feature_strides(self) -> tuple[int, ...]:
        """Each feature map's downscale relative to the condition image (``H / h``)."""
        stride = self.downscale_factor
        strides = []
        for level in self.levels():
            stride *= 2 if level.down else 1
            strides.append(stride)
        return tuple(strides)

    def describe(self) -> str:
        """One line for error messages."""
        return (
            f"{self.adapter_type}(in_channels={self.in_channels}, channels={list(self.channels)}, "
            f"num_res_blocks={self.num_res_blocks}, downscale_factor={self.downscale_factor})"
        )


def split_input_channels(unshuffled: int, where: str) -> tuple[int, int]:
    """``(in_channels, downscale_factor)`` from the width after the pixel unshuffle (``in_channels * factor**2``).

    RGB (3) is tried first, then grayscale (1): ``3 * a**2 == b**2`` has no integer solution, so at most
    one of them gives a whole factor.
    """
    for in_channels in (3, 1):
        if unshuffled % in_channels == 0:
            factor = math.isqrt(unshuffled // in_channels)
            if factor > 0 and factor * factor * in_channels == unshuffled:
                return in_channels, factor
    raise WeightsError(
        f"{where} takes {unshuffled} input channels, which is neither 3 * f**2 (RGB) nor f**2 (grayscale) "
        "for a whole pixel-unshuffle factor f"
    )


def _indices(state: Mapping[str, Any], prefix: str) -> list[int]:
    found = set()
    for key in state:
        if key.startswith(prefix):
            head = key[len(prefix) :].split(".", 1)[0]
            if head.isdigit():
                found.add(int(head))
    return sorted(found)


def _shape(state: Mapping[str, Any], key: str, origin: str) -> tuple[int, ...]:
    if key not in state:
        raise WeightsError(f"{origin}: expected key {key!r} to infer the T2I-Adapter config, it is missing")
    return tuple(state[key].shape)


def infer_config(state: Mapping[str, Any], origin: str = "weights", adapter_type: str | None = None) -> T2IConfig:
    """The config of a diffusers-keyed T2I-Adapter state dict (``adapter.conv_in...``, ``adapter.body.N...``).

    ``light_adapter`` is recognised by its missing ``conv_in``. ``full_adapter`` and ``full_adapter_xl`` have
    the same tensors (they differ only in where the parameter-free downsampling happens): ``adapter_type`` picks
    one; by default ``full_adapter_xl`` when the unshuffle factor is 16 (SDXL adapters), else ``full_adapter``.

    Raises:
        WeightsError: a key needed to read a shape is missing, or ``adapter_type`` contradicts the tensors.
    """
    has_conv_in = "adapter.conv_in.weight" in state
    allowed = ("full_adapter", "full_adapter_xl") if has_conv_in else ("light_adapter",)
    if adapter_type is not None and adapter_type not in allowed:
        raise WeightsError(
            f"{origin} {'has' if has_conv_in else 'has no'} adapter.conv_in: it is a {' or '.join(allowed)}, "
            f"not a {adapter_type}"
        )
    bodies = _indices(state, "adapter.body.")
    if not bodies or bodies != list(range(len(bodies))):
        raise WeightsError(f"{origin}: no consecutive adapter.body.N keys (found levels {bodies})")
    resnets = _indices(state, "adapter.body.0.resnets.")
    if resnets != list(range(len(resnets))):
        raise WeightsError(f"{origin}: adapter.body.0.resnets indices are not consecutive: {resnets}")
    if has_conv_in:
        conv_in = _shape(state, "adapter.conv_in.weight", origin)
        in_channels, factor = split_input_channels(conv_in[1], f"{origin}: adapter.conv_in")
        channels = tuple(
            _shape(state, f"adapter.body.{i}.resnets.0.block1.weight", origin)[0] if resnets else conv_in[0]
            for i in bodies
        )
        adapter_type = adapter_type or ("full_adapter_xl" if factor == 16 else "full_adapter")
    else:
        first = _shape(state, "adapter.body.0.in_conv.weight", origin)
        in_channels, factor = split_input_channels(first[1], f"{origin}: adapter.body.0.in_conv")
        channels = tuple(_shape(state, f"adapter.body.{i}.out_conv.weight", origin)[0] for i in bodies[:-1])
        adapter_type = "light_adapter"
    try:
        return T2IConfig(adapter_type, in_channels, channels, len(resnets), factor)
    except ValueError as error:
        raise WeightsError(f"{origin}: {error}") from error
