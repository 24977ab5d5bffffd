"""Shared pieces of the training tests: a tiny SD1.5-topology base, a toy dataset, a quick LoRA config."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

COLOURS = {"red": (230, 20, 20), "blue": (20, 20, 230), "green": (20, 200, 40), "yellow": (230, 220, 20)}


def write_toy_dataset(folder: Path, size: tuple[int, int] = (64, 64)) -> Path:
    """Solid-colour squares captioned ``a <colour> square``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, colour in COLOURS.items():
        Image.new("RGB", size, colour).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"a {name} square", encoding="utf-8")
    return folder


def lora_config(base: Path, data: Path, output: Path, **options: Any) -> Any:
    """A LoraTrainingConfig loading ``base`` with refiners-sd directly (a pipeline folder)."""
    from refiners_train.lora import LoraTrainingConfig

    defaults: dict[str, Any] = {"steps": 3, "lr": 1e-2, "seed": 0, "cache_latents": True}
    return LoraTrainingConfig(
        base=str(base), data=data, output=output, base_loader="refiners_sd:load_pipeline", **{**defaults, **options}
    )


def max_difference(first: Path, second: Path) -> float:
    """The largest absolute difference between the tensors of two safetensors files with the same keys."""
    a, b = load_file(first), load_file(second)
    assert a.keys() == b.keys()
    return max(float((a[key].float() - b[key].float()).abs().max()) for key in a)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from refiners_sd.demo import build_tiny_base

    return build_tiny_base(tmp_path_factory.mktemp("train") / "base")


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("train") / "data")


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
