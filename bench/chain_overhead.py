"""Forward overhead of Chain vs torch.nn.Sequential vs the original refiners 0.4.0 Chain.

Two shapes, batch 1, CPU, one thread: a flat chain of 64 x (Linear 64->64, ReLU) and the same layers
nested 64 levels deep (each level: Linear, ReLU, next level). Prints medians of repeated runs and
ratios to ``nn.Sequential``. refiners 0.4.0 is measured when importable (see bench/README.md).

Run: ``python bench/chain_overhead.py [--repeats 30] [--calls 200]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import refiners_core as rc

WIDTH = 64
DEPTH = 64


Factory = Callable[[], nn.Module]


def flat(chain: Callable[..., nn.Module], linear: Factory, relu: Factory) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(DEPTH):
        layers += [linear(), relu()]
    return chain(*layers)


def nested(
    chain: Callable[..., nn.Module], linear: Callable[[], nn.Module], relu: Callable[[], nn.Module]
) -> nn.Module:
    model = chain(linear(), relu())
    for _ in range(DEPTH - 1):
        model = chain(linear(), relu(), model)
    return model


def contenders() -> dict[str, tuple[Callable[..., nn.Module], Factory, Factory]]:
    found = {
        "nn.Sequential": (nn.Sequential, lambda: nn.Linear(WIDTH, WIDTH), nn.ReLU),
        "refiners-core": (rc.Chain, lambda: rc.Linear(WIDTH, WIDTH), rc.ReLU),
    }
    try:
        from importlib.metadata import version

        import refiners.fluxion.layers as fl  # the original project, installed in the bench environment only

        found[f"refiners {version('refiners')}"] = (fl.Chain, lambda: fl.Linear(WIDTH, WIDTH), fl.ReLU)
    except ImportError:
        pass
    return found


def median_time(model: nn.Module, x: torch.Tensor, repeats: int, calls: int) -> float:
    with torch.inference_mode():
        for _ in range(calls):
            model(x)
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                model(x)
            samples.append((time.perf_counter() - start) / calls)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(1, WIDTH)
    builders = contenders()
    results: dict[str, dict[str, float]] = {}
    # interleave contenders across rounds so drifting machine load hits them all alike
    for shape, build in (("flat", flat), ("nested", nested)):
        models = {name: build(*parts).eval() for name, parts in builders.items()}
        rounds: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(5):
            for name, model in models.items():
                rounds[name].append(median_time(model, x, args.repeats // 5 or 1, args.calls))
        for name in models:
            results.setdefault(name, {})[shape] = statistics.median(rounds[name])
    base = results["nn.Sequential"]
    print(f"{'implementation':<18} {'flat (us)':>10} {'x Seq':>7} {'nested (us)':>12} {'x Seq':>7}")
    for name, times in results.items():
        print(
            f"{name:<18} {times['flat'] * 1e6:>10.1f} {times['flat'] / base['flat']:>7.3f} "
            f"{times['nested'] * 1e6:>12.1f} {times['nested'] / base['nested']:>7.3f}"
        )


if __name__ == "__main__":
    main()
