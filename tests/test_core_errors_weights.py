"""Error annotation inside Chains, and safetensors/pickle weight I/O."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

import refiners_core as rc
from refiners_core.errors import PickleRefusedError, WeightsError


def test_errors_keep_their_type_and_gain_path_and_shapes() -> None:
    def lookup(x: torch.Tensor) -> torch.Tensor:
        raise KeyError("no such entry")

    model = rc.Chain(rc.Linear(4, 4), rc.Chain(rc.ReLU(), rc.Lambda(lookup)))
    with pytest.raises(KeyError) as info:
        model(torch.randn(3, 4))
    message = str(info.value)
    assert "no such entry" in message
    assert "Chain.Chain.Lambda" in message
    assert "Tensor(3, 4):float32" in message
    assert message.count("in layer") == 1  # annotated once, by the innermost Chain


def test_shape_error_from_torch_names_the_layer() -> None:
    model = rc.Chain(rc.Linear(4, 4), rc.Sum(rc.Linear(3, 4), rc.Identity()))
    with pytest.raises(RuntimeError, match=r"in layer Chain\.Sum\.Linear \(Linear\) with inputs \(Tensor\(2, 4\)"):
        model(torch.randn(2, 4))


def test_save_and_load_to_dtype(tmp_path: Path) -> None:
    model = rc.Chain(rc.Linear(4, 4), rc.Embedding(3, 4))
    path = rc.save_state_dict(model.state_dict(), tmp_path / "model.safetensors", metadata={"format": "test"})
    loaded = rc.load_state_dict(path, dtype=torch.float16)
    assert set(loaded) == set(model.state_dict())
    assert all(tensor.dtype == torch.float16 for tensor in loaded.values())
    assert torch.equal(loaded["Linear.weight"], model.Linear.weight.half())
    from refiners_core.weights import read_metadata

    assert read_metadata(path) == {"format": "test"}


def test_load_weights_reports_missing_unexpected_and_shapes(tmp_path: Path) -> None:
    source = rc.Chain(rc.Linear(4, 4), rc.Linear(4, 2))
    target = rc.Chain(rc.Linear(4, 4), rc.Linear(4, 2))
    path = rc.save_state_dict(source.state_dict(), tmp_path / "w.safetensors")
    target.load_weights(path)
    assert torch.equal(target.Linear_1.weight, source.Linear_1.weight)

    fresh = rc.Chain(rc.Linear(4, 4), rc.Linear(4, 2))
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    partial = {k: v for k, v in source.state_dict().items() if k != "Linear_2.bias"}
    partial["extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match=r"missing keys: Linear_2\.bias.*unexpected keys: extra\.weight"):
        fresh.load_weights(partial)
    wrong = dict(source.state_dict())
    wrong["Linear_1.weight"] = torch.zeros(5, 4)
    with pytest.raises(WeightsError, match=r"shape mismatch: Linear_1\.weight \(file \(5, 4\), model \(4, 4\)\)"):
        fresh.load_weights(wrong)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())  # untouched on error
    missing, unexpected = fresh.load_weights(partial, strict=False)
    assert missing == ["Linear_2.bias"] and unexpected == ["extra.weight"]


def test_pickle_is_refused_unless_opted_in(tmp_path: Path) -> None:
    tensors = {"weight": torch.ones(2)}
    path = tmp_path / "weights.bin"
    torch.save(tensors, path)
    with pytest.raises(PickleRefusedError, match="allow_pickle=True"):
        rc.load_state_dict(path)
    # same content under a safetensors-looking name is still detected
    disguised = tmp_path / "weights.safetensors"
    disguised.write_bytes(path.read_bytes())
    with pytest.raises(PickleRefusedError):
        rc.load_state_dict(disguised)
    assert torch.equal(rc.load_state_dict(path, allow_pickle=True)["weight"], torch.ones(2))


def test_pickle_opt_in_still_refuses_code(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("owned",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(WeightsError, match="cannot read pickled weights"):
        rc.load_state_dict(path, allow_pickle=True)


def test_unreadable_files_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        rc.load_state_dict(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"{not a header")
    with pytest.raises(WeightsError, match="bad.safetensors"):
        rc.load_state_dict(bad)


def test_load_weights_assigns_into_a_meta_built_module(tmp_path: Path) -> None:
    source = rc.Chain(rc.Linear(4, 4), rc.Linear(4, 2))
    path = rc.save_state_dict(source.state_dict(), tmp_path / "w.safetensors")
    target = rc.Chain(rc.Linear(4, 4, device="meta"), rc.Linear(4, 2, device="meta"))
    target.load_weights(path)
    assert not target.Linear_1.weight.is_meta
    x = torch.randn(3, 4)
    assert torch.equal(target(x), source(x))


def test_safetensors_header_size_starting_with_0x80_is_not_mistaken_for_pickle(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    for padding in range(512):
        rc.save_state_dict({"weight": torch.ones(2)}, path, metadata={"pad": "x" * padding})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert torch.equal(rc.load_state_dict(path)["weight"], torch.ones(2))


@pytest.mark.parametrize("keep", [20, 100], ids=["cut-in-header", "cut-in-data"])
def test_truncated_safetensors_with_size_byte_0x80_is_damaged_not_pickle(tmp_path: Path, keep: int) -> None:
    path = tmp_path / "w.safetensors"
    for padding in range(512):
        rc.save_state_dict({"weight": torch.ones(64)}, path, metadata={"pad": "x" * padding})
        if path.read_bytes()[0] == 0x80:
            break
    data = path.read_bytes()
    assert data[0] == 0x80
    header_end = 8 + int.from_bytes(data[:8], "little")
    path.write_bytes(data[: keep if keep < header_end else header_end + keep])
    with pytest.raises(rc.WeightsError) as caught:
        rc.load_state_dict(path)
    assert not isinstance(caught.value, rc.PickleRefusedError)
    assert "safetensors" in str(caught.value) and "allow_pickle" not in str(caught.value)
    if keep < header_end:
        assert "truncated" in str(caught.value)


def test_save_model_folder_writes_config_and_weights(tmp_path: Path) -> None:
    import json

    from refiners_core.weights import read_metadata, save_model_folder

    folder = save_model_folder(tmp_path / "model", {"b": 1, "a": [2]}, {"w": torch.ones(2)}, "model.safetensors")
    assert json.loads((folder / "config.json").read_text()) == {"a": [2], "b": 1}
    assert torch.equal(rc.load_state_dict(folder / "model.safetensors")["w"], torch.ones(2))
    assert read_metadata(folder / "model.safetensors") == {"format": "pt"}
