"""read_config, config_from_dict and resolve_config: one reader, one typed conversion, one error type."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from refiners_core import ConfigError, RefinersError, WeightsError, config_from_dict, read_config, resolve_config


@dataclass(frozen=True)
class Sizes:
    width: int
    channels: tuple[int, ...] = (1, 2)
    scale: float = 1.0
    act: str = "silu"
    shift: float | None = None
    flag: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.width <= 0:
            raise ValueError(f"width must be positive, got {self.width}")

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> Sizes:
        return config_from_dict(cls, config, source="sizes")


def test_read_config_file_or_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"width": 3}))
    assert read_config(tmp_path) == {"width": 3}
    assert read_config(tmp_path / "config.json") == {"width": 3}


@pytest.mark.parametrize(("text", "message"), [(None, "not found"), ("{", "cannot read"), ("[1]", "JSON object")])
def test_read_config_errors(tmp_path: Path, text: str | None, message: str) -> None:
    if text is not None:
        (tmp_path / "config.json").write_text(text)
    with pytest.raises(ConfigError, match=message) as raised:
        read_config(tmp_path, "UNet config")
    assert isinstance(raised.value, WeightsError | ValueError) and isinstance(raised.value, RefinersError)
    assert str(tmp_path) in str(raised.value)


def test_config_from_dict_converts_and_defaults() -> None:
    sizes = config_from_dict(Sizes, {"width": 4.0, "channels": [3, 4], "scale": 2, "shift": None, "_class_name": "X"})
    assert sizes == Sizes(width=4, channels=(3, 4), scale=2.0)
    assert isinstance(sizes.width, int) and isinstance(sizes.scale, float)
    assert config_from_dict(Sizes, {"width": 1, "act": None}).act == "silu"  # null where None is not allowed


def test_config_from_dict_names_every_problem() -> None:
    with pytest.raises(ConfigError) as raised:
        config_from_dict(Sizes, {"channels": ["a"], "flag": "yes", "bogus": 1}, source="cfg.json", strict=True)
    message = str(raised.value)
    assert message.startswith("cfg.json: missing fields width")
    assert "unknown fields bogus" in message
    assert "'channels' should be tuple[int, ...], got ['a']" in message
    assert "'flag' should be bool" in message
    config_from_dict(Sizes, {"width": 1, "bogus": 1})  # unknown keys are ignored unless strict


def test_config_from_dict_post_init_error_is_config_error() -> None:
    with pytest.raises(ConfigError, match="sizes: width must be positive"):
        Sizes.from_dict({"width": 0})


def test_resolve_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"width": 5}))
    instance = Sizes(width=2)
    assert resolve_config(instance, Sizes) is instance
    assert resolve_config({"width": 3}, Sizes).width == 3
    assert resolve_config(tmp_path, Sizes).width == 5
    assert resolve_config(None, Sizes, default=tmp_path).width == 5
    assert resolve_config(None, Sizes, default=lambda: instance) is instance
    with pytest.raises(ConfigError, match="no sizes config given"):
        resolve_config(None, Sizes, what="sizes config")
    with pytest.raises(ConfigError, match="must be a Sizes"):
        resolve_config(3, Sizes)
