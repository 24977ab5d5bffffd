"""Build a small Chain, inject an adapter, check the output changes, eject it and get the exact model back."""

from __future__ import annotations

import torch

import refiners_core as rc


class LowRank(rc.Sum, rc.Adapter[rc.Linear]):
    """A minimal low-rank adapter: target(x) + up(down(x))."""

    def __init__(self, target: rc.Linear, rank: int = 2) -> None:
        with self.setup_adapter(target):
            super().__init__(
                target,
                rc.Chain(
                    rc.Linear(target.in_features, rank, bias=False),
                    rc.Linear(rank, target.out_features, bias=False),
                ),
            )


def main() -> None:
    torch.manual_seed(0)
    model = rc.Chain(rc.Linear(8, 16), rc.SiLU(), rc.Chain(rc.Linear(16, 16), rc.SiLU()), rc.Linear(16, 4))
    x = torch.randn(2, 8)
    before, keys = model(x), list(model.state_dict())

    adapter = LowRank(model.Chain.Linear).inject()
    print(model)
    changed = (model(x) - before).abs().max().item()
    adapter.eject()
    exact = torch.equal(model(x), before) and list(model.state_dict()) == keys
    print(f"adapter changed the output by up to {changed:.4f}; after eject the model is identical: {exact}")
    if not exact:
        raise SystemExit("eject did not restore the model")


if __name__ == "__main__":
    main()
