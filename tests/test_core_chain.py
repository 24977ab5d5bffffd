"""Chain: naming, running, traversal, editing, structural copy, repr."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import refiners_core as rc
from refiners_core.errors import ChainError


def small_chain() -> rc.Chain:
    torch.manual_seed(0)
    return rc.Chain(
        rc.Linear(4, 4),
        rc.ReLU(),
        rc.Chain(rc.Linear(4, 4), rc.SiLU()),
        rc.Linear(4, 2),
    )


def test_names_follow_classes_and_number_duplicates() -> None:
    chain = small_chain()
    assert chain.children_names == ["Linear_1", "ReLU", "Chain", "Linear_2"]
    named = rc.Chain(rc.Linear(2, 2), proj=rc.Linear(2, 2))
    assert named.children_names == ["Linear", "proj"]
    with pytest.raises(ChainError, match="duplicate"):
        rc.Chain(rc.Linear(2, 2), Linear=rc.Linear(2, 2))


def test_forward_matches_sequential_and_unpacks_tuples() -> None:
    chain = small_chain()
    reference = nn.Sequential(chain[0], nn.ReLU(), chain[2][0], nn.SiLU(), chain[3])
    x = torch.randn(3, 4)
    assert torch.equal(chain(x), reference(x))
    pair = rc.Chain(rc.Lambda(lambda x: (x, 2 * x)), rc.Lambda(lambda a, b: a + b))
    assert torch.equal(pair(x), 3 * x)
    assert torch.equal(rc.Chain()(x), x)


def test_every_node_knows_its_parent_and_path() -> None:
    chain = small_chain()
    inner = chain.Chain
    assert chain.parent is None
    assert inner.parent is chain
    assert inner.Linear.parent is inner
    assert rc.get_parent(inner.SiLU) is inner
    assert inner.Linear.path == "Chain.Chain.Linear"
    # any torch module inside a Chain gets a parent too
    plain = nn.Tanh()
    holder = rc.Chain(plain)
    assert rc.get_parent(plain) is holder


def test_getitem_len_iter() -> None:
    chain = small_chain()
    assert len(chain) == 4
    assert chain[-1] is chain.Linear_2
    assert chain["ReLU"] is chain[1]
    assert list(chain) == [chain[0], chain[1], chain[2], chain[3]]
    with pytest.raises(ChainError, match="no child 'Nope'"):
        chain["Nope"]
    with pytest.raises(ChainError, match="out of range"):
        chain[9]


def test_walk_layers_find() -> None:
    chain = small_chain()
    linears = list(chain.layers(rc.Linear))
    assert linears == [chain.Linear_1, chain.Chain.Linear, chain.Linear_2]
    walked = list(chain.walk(rc.Linear))
    assert [parent for _, parent in walked] == [chain, chain.Chain, chain]
    everything = [module for module, _ in chain.walk()]
    assert len(everything) == 6
    # a matching Chain is not descended into unless recurse=True
    assert [m for m, _ in chain.walk(rc.Chain)] == [chain.Chain]
    outer = rc.Chain(rc.Chain(rc.Chain(rc.ReLU())))
    assert len(list(outer.walk(rc.Chain))) == 1
    assert len(list(outer.walk(rc.Chain, recurse=True))) == 2
    assert len(list(chain.walk(lambda module, parent: isinstance(module, rc.SiLU)))) == 1
    assert chain.find(rc.SiLU) is chain.Chain.SiLU
    assert chain.find(rc.GroupNorm) is None
    with pytest.raises(ChainError, match="no GroupNorm"):
        chain.ensure_find(rc.GroupNorm)
    assert chain.find_parent(chain.Chain.SiLU) is chain.Chain


def test_layer_path() -> None:
    chain = small_chain()
    assert chain.layer("Chain.Linear") is chain.Chain.Linear
    assert chain.layer("2.0") is chain.Chain.Linear
    assert chain.layer("Chain.Linear", rc.Linear) is chain.Chain.Linear
    with pytest.raises(ChainError, match="expected Conv2d"):
        chain.layer("Chain.Linear", rc.Conv2d)
    with pytest.raises(ChainError, match="no child 'Missing'"):
        chain.layer("Chain.Missing")
    with pytest.raises(ChainError, match="not a Chain"):
        chain.layer("ReLU.x")


def test_editing_never_renames_siblings() -> None:
    chain = small_chain()
    keys = set(chain.state_dict())
    chain.insert(0, rc.Linear(4, 4))
    assert chain.children_names == ["Linear_3", "Linear_1", "ReLU", "Chain", "Linear_2"]
    assert keys <= set(chain.state_dict())
    removed = chain.pop(0)
    assert rc.get_parent(removed) is None
    assert set(chain.state_dict()) == keys
    chain.append(rc.Identity())
    chain.insert_before_type(rc.ReLU, rc.Multiply(2.0))
    chain.insert_after_type(rc.ReLU, rc.Multiply(3.0))
    assert chain.children_names == ["Linear_1", "Multiply", "ReLU", "Multiply_2", "Chain", "Linear_2", "Identity"]
    chain.remove(chain.Multiply)
    chain.remove(chain.Multiply_2)
    new_relu = rc.ReLU()
    old_relu = chain.ReLU
    chain.replace(old_relu, new_relu)
    assert chain.ReLU is new_relu and new_relu.parent is chain and old_relu.parent is None
    assert set(chain.state_dict()) == keys
    with pytest.raises(ChainError):
        chain.remove(old_relu)
    with pytest.raises(ChainError, match="no direct child of type"):
        chain.insert_before_type(rc.Conv2d, rc.ReLU())
    with pytest.raises(ChainError, match="must be torch.nn.Module"):
        chain.append("not a module")  # type: ignore[arg-type]


def test_structural_copy_shares_weights_not_structure() -> None:
    chain = small_chain()
    x = torch.randn(2, 4)
    clone = chain.structural_copy()
    assert clone is not chain and clone.Chain is not chain.Chain
    assert clone.Linear_1 is chain.Linear_1
    assert torch.equal(clone(x), chain(x))
    clone.Chain.append(rc.Multiply(0.0))
    assert len(chain.Chain) == 2
    assert clone.Chain.parent is clone


def test_deepcopy_reparents_children() -> None:
    chain = small_chain()
    clone = copy.deepcopy(chain)
    assert clone.Chain.parent is clone
    assert clone.Chain.Linear.parent is clone.Chain
    assert clone.Linear_1 is not chain.Linear_1


def test_repr_prints_tree_and_folds_repeats() -> None:
    chain = rc.Chain(*[rc.Chain(rc.Linear(2, 2), rc.ReLU()) for _ in range(3)], rc.SiLU())
    text = repr(chain)
    assert text.splitlines()[0] == "(CHAIN) Chain()"
    assert "Chain_1..Chain_3: (CHAIN) Chain() (x3)" in text
    assert "Linear: Linear(in_features=2, out_features=2, bias=True)" in text
    assert text.count("Linear(") == 1
    assert "└── SiLU: SiLU()" in text


def test_return_stops_the_chain() -> None:
    x = torch.ones(1)
    chain = rc.Chain(rc.Multiply(2.0), rc.Return(), rc.Multiply(100.0))
    assert torch.equal(chain(x), 2 * x)


def test_return_inside_a_nested_chain_ends_only_that_chain() -> None:
    x = torch.ones(1)
    chain = rc.Chain(rc.Chain(rc.Multiply(2.0), rc.Return(), rc.Multiply(100.0)), rc.Multiply(3.0))
    assert torch.equal(chain(x), 6 * x)
    pair = rc.Chain(rc.Lambda(lambda x: (x, x)), rc.Return(), rc.Multiply(0.0))
    first, second = pair(x)
    assert torch.equal(first, x) and torch.equal(second, x)
