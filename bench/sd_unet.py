"""Build time of full-size SD1.5 and SDXL UNets on the meta device: refiners-sd vs diffusers, side by side.

Prints the median of repeated meta-device builds (fp16), the parameter counts and the ratio.
diffusers is an anchor installed in the bench environment only (see bench/README.md).
Run: ``python bench/sd_unet.py [--repeats 5]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from refiners_sd import SD15_UNET_CONFIG, SDXL_UNET_CONFIG, SD1UNet, SDXLUNet
from torch import nn


def median_build(build: Callable[[], nn.Module], repeats: int) -> tuple[float, int]:
    """Median seconds of ``build()`` and the parameter count of the last model built."""
    times = []
    model = build()
    for _ in range(repeats):
        start = time.perf_counter()
        model = build()
        times.append(time.perf_counter() - start)
    return statistics.median(times), sum(parameter.numel() for parameter in model.parameters())


def diffusers_builder(config: dict[str, object]) -> Callable[[], nn.Module] | None:
    """A meta-device diffusers UNet builder, or None when diffusers is not installed."""
    try:
        from diffusers import UNet2DConditionModel
    except ImportError:
        return None

    from diffusers.utils import logging

    logging.set_verbosity_error()  # silence the per-build dtype-cast warning

    def build() -> nn.Module:
        with torch.device("meta"):
            return UNet2DConditionModel.from_config(config).to(torch.float16)

    return build


def main() -> None:
    """Time meta-device builds of the real SD1.5 and SDXL UNet configs."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{'model':<8} {'params':>15} {'refiners-sd (s)':>16} {'diffusers (s)':>14} {'ratio':>7}")
    for name, unet_class, config in (("SD1.5", SD1UNet, SD15_UNET_CONFIG), ("SDXL", SDXLUNet, SDXL_UNET_CONFIG)):
        ours, count = median_build(lambda cls=unet_class: cls(device="meta", dtype=torch.float16), args.repeats)
        anchor = diffusers_builder(dict(config))
        theirs = median_build(anchor, args.repeats)[0] if anchor is not None else float("nan")
        print(f"{name:<8} {count:>15,} {ours:>16.3f} {theirs:>14.3f} {theirs / ours:>6.1f}x")


if __name__ == "__main__":
    main()
