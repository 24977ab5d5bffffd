"""find_weight_files: one search for the weight files of a model folder, with a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from refiners_core import PickleRefusedError, WeightsError, find_weight_files, is_pickle_name, load_weight_files
from refiners_core.weights import save_state_dict


def _write(folder: Path, name: str) -> Path:
    return save_state_dict({"w": torch.zeros(1)}, folder / name)


def test_plain_file_first_then_fp16(tmp_path: Path) -> None:
    fp16 = _write(tmp_path, "diffusion_pytorch_model.fp16.safetensors")
    assert find_weight_files(tmp_path) == [fp16]
    plain = _write(tmp_path, "diffusion_pytorch_model.safetensors")
    assert find_weight_files(tmp_path) == [plain]
    assert find_weight_files(tmp_path, variant="fp16") == [fp16]


def test_transformers_stem_and_explicit_stem(tmp_path: Path) -> None:
    model = _write(tmp_path, "model.safetensors")
    assert find_weight_files(tmp_path) == [model]
    expected = "no UNet weights in .*diffusion_pytorch_model.safetensors.*found model.safetensors"
    with pytest.raises(WeightsError, match=expected):
        find_weight_files(tmp_path, "diffusion_pytorch_model", what="UNet weights")


def test_shards_from_index(tmp_path: Path) -> None:
    first, second = _write(tmp_path, "model-00001.safetensors"), _write(tmp_path, "model-00002.safetensors")
    index = {"weight_map": {"a": first.name, "b": second.name, "c": first.name}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert find_weight_files(tmp_path) == [first, second]
    save_state_dict({"v": torch.ones(2)}, second)
    assert set(load_weight_files(find_weight_files(tmp_path))) == {"w", "v"}
    second.unlink()
    with pytest.raises(WeightsError, match="model-00002.safetensors"):
        find_weight_files(tmp_path)


def test_requested_variant_is_strict(tmp_path: Path) -> None:
    _write(tmp_path, "model.safetensors")
    with pytest.raises(WeightsError, match=r"looked for model\.bf16\.safetensors"):
        find_weight_files(tmp_path, "model", variant="bf16")


def test_pickle_only_on_opt_in(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(1)}, tmp_path / "diffusion_pytorch_model.bin")
    with pytest.raises(PickleRefusedError, match="allow_pickle=True"):
        find_weight_files(tmp_path)
    assert find_weight_files(tmp_path, allow_pickle=True) == [tmp_path / "diffusion_pytorch_model.bin"]
    safetensors = _write(tmp_path, "diffusion_pytorch_model.safetensors")
    assert find_weight_files(tmp_path, allow_pickle=True) == [safetensors]


def test_single_file_fallback(tmp_path: Path) -> None:
    only = _write(tmp_path, "my-adapter.safetensors")
    assert find_weight_files(tmp_path, any_single_file=True) == [only]
    with pytest.raises(WeightsError, match="found my-adapter.safetensors"):
        find_weight_files(tmp_path)
    _write(tmp_path, "other.safetensors")
    with pytest.raises(WeightsError, match="single .safetensors file"):
        find_weight_files(tmp_path, any_single_file=True)
    message = "looked for a single .safetensors file; found my-adapter.safetensors, other.safetensors"
    with pytest.raises(WeightsError, match=message):
        find_weight_files(tmp_path, (), any_single_file=True)


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="LoRA weights not found"):
        find_weight_files(tmp_path / "absent", what="LoRA weights")


def test_pickle_names() -> None:
    assert all(is_pickle_name(f"x{suffix}") for suffix in (".bin", ".PT", ".pth", ".ckpt", ".pkl", ".pickle"))
    assert not is_pickle_name("x.safetensors")
