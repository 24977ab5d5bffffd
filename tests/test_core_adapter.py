"""Adapters: inject/eject round trips, stacking in any order, all-or-nothing injection."""

from __future__ import annotations

import itertools

import pytest
import torch

import refiners_core as rc
from refiners_core.errors import AdapterError


class LowRank(rc.Sum, rc.Adapter[rc.Linear]):
    """A LoRA-like adapter used to exercise the mechanism."""

    def __init__(self, target: rc.Linear, rank: int = 2) -> None:
        with self.setup_adapter(target):
            super().__init__(
                target,
                rc.Chain(
                    rc.Linear(target.in_features, rank, bias=False), rc.Linear(rank, target.out_features, bias=False)
                ),
            )


class Scaled(rc.Chain, rc.Adapter[rc.Module]):
    """Multiplies the target's output."""

    def __init__(self, target: rc.Module, scale: float) -> None:
        with self.setup_adapter(target):
            super().__init__(target, rc.Multiply(scale))


def make_model() -> rc.Chain:
    torch.manual_seed(0)
    return rc.Chain(rc.Linear(4, 4), rc.ReLU(), rc.Chain(rc.Linear(4, 4), rc.SiLU()), rc.Linear(4, 2))


def snapshot(model: rc.Chain) -> tuple[list[str], list[int], torch.Tensor]:
    x = torch.arange(8.0).reshape(2, 4) / 8
    return list(model.state_dict()), [id(m) for m, _ in model.walk()], model(x)


def test_inject_eject_round_trip_on_a_leaf_without_parent_argument() -> None:
    model = make_model()
    keys, ids, out = snapshot(model)
    target = model.Chain.Linear
    adapter = LowRank(target)
    assert target.parent is model.Chain  # building an adapter does not move the target
    assert adapter.inject() is adapter
    assert model.Chain.Linear is adapter and target.parent is adapter
    assert adapter.is_injected
    assert "Chain.Linear.Linear.weight" in model.state_dict()
    assert not torch.equal(snapshot(model)[2], out)
    adapter.eject()
    assert not adapter.is_injected
    assert model.Chain.Linear is target and target.parent is model.Chain
    new_keys, new_ids, new_out = snapshot(model)
    assert new_keys == keys and new_ids == ids and torch.equal(new_out, out)
    # an ejected adapter can be injected again
    adapter.inject()
    adapter.eject()
    assert torch.equal(snapshot(model)[2], out)


def test_inject_with_explicit_parent_and_errors() -> None:
    model = make_model()
    adapter = LowRank(model.Linear_1)
    with pytest.raises(AdapterError, match="not a child of"):
        adapter.inject(model.Chain)
    adapter.inject(model)
    with pytest.raises(AdapterError, match="already injected"):
        adapter.inject()
    adapter.eject()
    with pytest.raises(AdapterError, match="not injected"):
        adapter.eject()
    with pytest.raises(AdapterError, match="not inside a Chain"):
        LowRank(rc.Linear(2, 2)).inject()


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_stacked_adapters_eject_in_any_order(order: tuple[int, ...]) -> None:
    model = make_model()
    keys, ids, out = snapshot(model)
    target = model.Linear_2
    first = LowRank(target).inject()
    second = LowRank(target).inject()  # wraps the target inside the first adapter
    third = Scaled(first, 0.5).inject()  # wraps the first adapter itself
    stacked = snapshot(model)[2]
    assert not torch.equal(stacked, out)
    adapters = [first, second, third]
    for index in order:
        adapters[index].eject()
    assert snapshot(model)[0] == keys
    assert snapshot(model)[1] == ids
    assert torch.equal(snapshot(model)[2], out)
    assert model.Linear_2 is target and target.parent is model


def test_inject_adapters_is_all_or_nothing() -> None:
    model = make_model()
    keys, ids, out = snapshot(model)
    good = LowRank(model.Linear_1)
    also_good = Scaled(model.ReLU, 2.0)
    orphan = LowRank(rc.Linear(4, 4))
    with pytest.raises(AdapterError):
        rc.inject_adapters([good, also_good, orphan])
    assert not good.is_injected and not also_good.is_injected
    assert snapshot(model)[0] == keys and snapshot(model)[1] == ids and torch.equal(snapshot(model)[2], out)
    injected = rc.inject_adapters([good, also_good])
    assert len(injected) == 2
    rc.eject_adapters(injected)
    assert torch.equal(snapshot(model)[2], out)


def test_adapter_without_setup_is_reported() -> None:
    class Broken(rc.Chain, rc.Adapter[rc.Linear]):
        def __init__(self, target: rc.Linear) -> None:
            super().__init__(target)

    with pytest.raises(AdapterError, match="setup_adapter"):
        Broken(rc.Linear(2, 2)).inject()
