"""cast_state_dict, unwrap_adapters and Chain.device / Chain.dtype."""

from __future__ import annotations

import pytest
import torch

import refiners_core as rc


def test_cast_state_dict_casts_floats_only() -> None:
    state = {"w": torch.ones(2), "i": torch.arange(2)}
    cast = rc.cast_state_dict(state, device="cpu", dtype=torch.float16)
    assert cast["w"].dtype == torch.float16 and cast["i"].dtype == torch.int64
    assert torch.equal(cast["w"].float(), state["w"])
    kept = rc.cast_state_dict(state)
    assert kept["w"] is state["w"] and kept is not state


class Scale(rc.Chain, rc.Adapter[rc.Linear]):
    def __init__(self, target: rc.Linear) -> None:
        with self.setup_adapter(target):
            super().__init__(target, rc.Multiply(2.0))


def test_unwrap_adapters_through_a_stack() -> None:
    linear = rc.Linear(2, 2)
    model = rc.Chain(linear)
    first = Scale(linear).inject(model)
    second = Scale(first).inject(model)  # type: ignore[arg-type]
    assert model[0] is second
    assert rc.unwrap_adapters(model[0]) is linear
    assert rc.unwrap_adapters(linear) is linear


def test_chain_device_and_dtype() -> None:
    model = rc.Chain(rc.Identity(), rc.Linear(2, 2, dtype=torch.float64))
    assert model.device == torch.device("cpu") and model.dtype == torch.float64
    with pytest.raises(rc.ChainError, match="Chain has no parameters: its device is undefined"):
        _ = rc.Chain(rc.Identity()).device
    with pytest.raises(rc.ChainError, match="dtype is undefined"):
        _ = rc.Chain().dtype
