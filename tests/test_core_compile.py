"""torch.compile(fullgraph=True) on a Chain with contexts and an injected adapter."""

from __future__ import annotations

import torch

import refiners_core as rc


class WithContext(rc.Chain):
    def init_context(self) -> rc.Contexts:
        return {"cond": {}}


class LowRank(rc.Sum, rc.Adapter[rc.Linear]):
    def __init__(self, target: rc.Linear) -> None:
        with self.setup_adapter(target):
            super().__init__(target, rc.Chain(rc.Linear(target.in_features, 2), rc.Linear(2, target.out_features)))


def test_compile_fullgraph_equals_eager() -> None:
    torch.manual_seed(0)
    model = WithContext(
        rc.Linear(8, 8),
        rc.Sum(rc.Identity(), rc.UseContext("cond", "bias")),
        rc.Residual(rc.Linear(8, 8), rc.SiLU()),
        rc.Passthrough(rc.SetContext("cond", "last")),
        rc.SelfAttention(8, num_heads=2),
        rc.Linear(8, 4),
    )
    LowRank(model.Linear_1).inject()
    x = torch.randn(2, 3, 8)
    model.set_context("cond", {"bias": torch.randn(2, 3, 8)})
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True)(x)
    assert torch.allclose(compiled, eager, atol=1e-5)
