"""Build time of the full-size SD1.5 and SDXL UNets on the meta device, and a small CPU forward.

Prints the median of repeated meta builds (fp16) and the parameter count. Run: ``python bench/sd_unet.py [--repeats 5]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from refiners_sd import SD1UNet, SDXLUNet


def main() -> None:
    """Time meta-device builds of the real SD1.5 and SDXL UNet configs."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for unet_class in (SD1UNet, SDXLUNet):
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            unet = unet_class(device="meta", dtype=torch.float16)
            times.append(time.perf_counter() - start)
        count = sum(parameter.numel() for parameter in unet.parameters())
        print(f"{unet_class.__name__}: {count:,} parameters, meta build median {statistics.median(times):.3f}s")


if __name__ == "__main__":
    main()
