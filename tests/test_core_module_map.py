"""Loading and exporting weights under foreign module names."""

from __future__ import annotations

import pytest
import torch

import refiners_core as rc
from refiners_core.errors import WeightsError


def model_and_map() -> tuple[rc.Chain, dict[str, torch.nn.Module]]:
    model = rc.Chain(rc.Linear(4, 4), rc.Chain(rc.LayerNorm(4), rc.Linear(4, 2)))
    return model, {"proj_in": model.Linear, "block.norm": model.Chain.LayerNorm, "block.out": model.Chain.Linear}


def test_round_trip_through_foreign_names() -> None:
    source, source_map = model_and_map()
    foreign = rc.state_dict_by_module_map(source_map)
    assert set(foreign) == {
        "proj_in.weight",
        "proj_in.bias",
        "block.norm.weight",
        "block.norm.bias",
        "block.out.weight",
        "block.out.bias",
    }
    target, target_map = model_and_map()
    rc.load_by_module_map(target, target_map, foreign)
    x = torch.randn(2, 4)
    assert torch.equal(target(x), source(x))


def test_meta_model_gets_tensors_assigned() -> None:
    source, source_map = model_and_map()
    with torch.device("meta"):
        target, target_map = model_and_map()
    rc.load_by_module_map(target, target_map, rc.state_dict_by_module_map(source_map))
    assert not any(p.is_meta for p in target.parameters())


def test_every_key_is_accounted_for() -> None:
    source, source_map = model_and_map()
    foreign = rc.state_dict_by_module_map(source_map)
    target, target_map = model_and_map()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    broken = dict(foreign)
    del broken["block.out.bias"]
    broken["block.extra.weight"] = torch.zeros(1)
    broken["proj_in.weight"] = torch.zeros(3, 4)
    with pytest.raises(WeightsError) as info:
        rc.load_by_module_map(target, target_map, broken, source="model.safetensors")
    message = str(info.value)
    assert "model.safetensors" in message
    assert "missing keys: block.out.bias" in message
    assert "unexpected keys: block.extra.weight" in message
    assert "shape mismatch: proj_in.weight (file (3, 4), model (4, 4))" in message
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())
    rc.load_by_module_map(target, target_map, {**foreign, "ignored.key": torch.zeros(1)}, ignore=["ignored.key"])
    partial_map = {k: v for k, v in target_map.items() if k != "block.norm"}
    with pytest.raises(WeightsError, match=r"parameters with no source key: Chain\.LayerNorm\.weight"):
        rc.load_by_module_map(target, partial_map, {k: v for k, v in foreign.items() if "norm" not in k})
