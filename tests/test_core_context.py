"""Contexts: declaration, set, read, scoping across trees, reset, and callbacks."""

from __future__ import annotations

import pytest
import torch

import refiners_core as rc
from refiners_core.errors import ContextError


class Conditioned(rc.Chain):
    def init_context(self) -> rc.Contexts:
        return {"cond": {"scale": 2.0}}


def make() -> Conditioned:
    return Conditioned(
        rc.Sum(rc.Identity(), rc.UseContext("cond", "bias")),
        rc.Lambda(lambda x: x),
        rc.Passthrough(rc.SetContext("cond", "seen")),
    )


def test_set_and_read() -> None:
    model = make()
    x = torch.zeros(2)
    model.set_context("cond", {"bias": torch.ones(2)})
    assert torch.equal(model(x), torch.ones(2))
    assert torch.equal(model.use_context("cond")["seen"], torch.ones(2))
    # setting from any node reaches the whole tree; other keys are kept
    model.Sum.set_context("cond", {"bias": 3 * torch.ones(2)})
    assert model.use_context("cond")["scale"] == 2.0
    assert torch.equal(model(x), 3 * torch.ones(2))


def test_unset_key_names_context_and_key() -> None:
    model = make()
    with pytest.raises(ContextError, match="context 'cond' has no value for key 'bias'") as info:
        model(torch.zeros(2))
    assert isinstance(info.value, KeyError)
    with pytest.raises(ContextError, match="'missing' is not declared"):
        model.use_context("missing")


def test_contexts_of_a_subtree_join_the_root() -> None:
    inner = make()
    inner.set_context("cond", {"bias": torch.ones(2)})
    outer = rc.Chain(rc.Multiply(2.0), inner)
    # the inner Chain's declared defaults and values are adopted by the new root
    assert outer.use_context("cond")["scale"] == 2.0
    assert torch.equal(outer(torch.zeros(2)), torch.ones(2))
    outer.set_context("cond", {"bias": torch.full((2,), 5.0)})
    assert torch.equal(inner.use_context("cond")["bias"], torch.full((2,), 5.0))


def test_trees_are_scoped() -> None:
    first, second = make(), make()
    first.set_context("cond", {"bias": torch.ones(2)})
    assert "bias" not in second.use_context("cond")


def test_reset_restores_declared_defaults() -> None:
    model = make()
    model.set_context("cond", {"bias": torch.ones(2), "scale": 9.0})
    model.reset_context("cond")
    assert model.use_context("cond") == {"scale": 2.0}
    model.set_context("other", {"a": 1})
    model.reset_context()
    assert model.use_context("other") == {}


def test_set_context_callback() -> None:
    class Accumulating(rc.Chain):
        def init_context(self) -> rc.Contexts:
            return {"acc": {"items": []}}

    model = Accumulating(
        rc.Passthrough(rc.SetContext("acc", "items", callback=lambda items, x: items.append(x))),
        rc.Multiply(2.0),
        rc.Passthrough(rc.SetContext("acc", "items", callback=lambda items, x: items.append(x))),
    )
    model(torch.ones(1))
    assert [item.item() for item in model.use_context("acc")["items"]] == [1.0, 2.0]


def test_context_layer_outside_a_chain() -> None:
    with pytest.raises(ContextError, match="not inside a Chain"):
        rc.UseContext("a", "b")()


def test_mutable_defaults_are_not_shared_with_live_values() -> None:
    class WithList(rc.Chain):
        def init_context(self) -> rc.Contexts:
            return {"acc": {"items": []}}

    model = WithList(rc.Passthrough(rc.SetContext("acc", "items", callback=lambda items, x: items.append(x))))
    model(torch.ones(1))
    assert len(model.use_context("acc")["items"]) == 1
    model.reset_context("acc")
    assert model.use_context("acc")["items"] == []
    model(torch.ones(1))
    model.reset_context("acc")
    assert model.use_context("acc")["items"] == []
