"""Forward time of the full-size SD1.5 UNet: our ``SD1UNet`` vs ``diffusers.UNet2DConditionModel``, same weights.

fp32 on CPU, ``torch.inference_mode``, 2 threads by default, 32x32 latents (256 px images), 77 text tokens,
batch 1 and batch 2 (classifier-free guidance). The diffusers UNet is built from the real SD1.5 config on the
``meta`` device, materialised with random fan-in-scaled weights and saved with ``save_pretrained`` into a
temporary folder; ours is loaded from that folder with ``SD1UNet.from_diffusers``. The largest absolute
difference between the two outputs is printed (and must be small) before anything is timed.

A second section injects one random rank-8 kohya LoRA (every attention projection and ResNet convolution, the
file of ``bench/lora.py``) unfused on both sides: ``LoraManager.add`` for ours, ``load_lora_weights`` (peft
layers) for diffusers; the outputs are compared again, then timed the same way.

Each measurement: one warm-up round, then ``--repeats`` rounds with the two libraries interleaved per batch
size; the median is printed with the ratio diffusers / ours (above 1: ours is faster).

Run: ``python bench/unet_forward.py [--repeats 5] [--lora-repeats 5] [--threads 2]`` (``--lora-repeats 0``
skips the LoRA section). Informative only; takes about 3 minutes on 2 cores and 8 GB of memory.
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

LATENT = 32
TOKENS = 77
TOLERANCE = 1e-3  # relative to the largest output value


@torch.no_grad()
def materialise(model: nn.Module, seed: int) -> nn.Module:
    """Give a meta-built model CPU storage: matrices and kernels ~ N(0, 1/fan_in), norm weights ~ 1, biases ~ 0."""
    model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in model.named_parameters():
        if parameter.dim() >= 2:
            parameter.normal_(0.0, 1.0 / math.sqrt(parameter[0].numel()), generator=generator)
        elif name.endswith("weight"):  # GroupNorm / LayerNorm scales
            parameter.normal_(1.0, 0.02, generator=generator)
        else:
            parameter.normal_(0.0, 0.02, generator=generator)
    for buffer in model.buffers():
        if buffer.is_floating_point():
            buffer.zero_()
    return model.eval()


def build_diffusers_unet() -> Any:
    """A random full-size SD1.5 diffusers UNet."""
    from diffusers import UNet2DConditionModel
    from refiners_sd import SD15_UNET_CONFIG

    with torch.device("meta"):
        model = UNet2DConditionModel.from_config(SD15_UNET_CONFIG)
    return materialise(model, seed=0)


def make_inputs(batch: int) -> dict[str, torch.Tensor]:
    """Latents, timesteps and text embeddings; batch 2 stacks two different items as CFG does."""
    generator = torch.Generator().manual_seed(1)
    return {
        "sample": torch.randn(batch, 4, LATENT, LATENT, generator=generator),
        "timestep": torch.full((batch,), 500),
        "text": torch.randn(batch, TOKENS, 768, generator=generator),
    }


def forward_ours(unet: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """One call of our UNet (contexts set first, as a denoising loop does at each step)."""
    with torch.inference_mode():
        unet.set_timestep(inputs["timestep"])
        unet.set_clip_text_embedding(inputs["text"])
        return unet(inputs["sample"])


def forward_theirs(unet: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """One call of the diffusers UNet."""
    with torch.inference_mode():
        return unet(inputs["sample"], inputs["timestep"], encoder_hidden_states=inputs["text"]).sample


def check(label: str, ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """Assert both outputs agree (relative to their scale); return and print the max abs difference."""
    scale = theirs.abs().max().item()
    error = (ours - theirs).abs().max().item()
    print(f"- {label}: max abs diff {error:.1e} (output max {scale:.2f})")
    assert error <= TOLERANCE * scale, f"{label}: outputs differ by {error:.2e}"
    return error


def interleaved(
    cases: dict[str, dict[str, Callable[[], Any]]], repeats: int, warmup: int = 1
) -> dict[str, dict[str, float]]:
    """For each round, each case, each library: time one call. Returns the medians after ``warmup`` rounds."""
    times: dict[str, dict[str, list[float]]] = {case: {library: [] for library in runs} for case, runs in cases.items()}
    for round_index in range(warmup + repeats):
        for case, runs in cases.items():
            for library, run in runs.items():
                start = time.perf_counter()
                run()
                elapsed = time.perf_counter() - start
                if round_index >= warmup:
                    times[case][library].append(elapsed)
    return {
        case: {library: statistics.median(values) for library, values in runs.items()} for case, runs in times.items()
    }


def section(ours: Any, theirs: Any, label: str, repeats: int) -> list[tuple[str, float, float]]:
    """Check batch 1 and 2 outputs, then time them; returns ``(row label, ours s, diffusers s)`` rows."""
    cases: dict[str, dict[str, Callable[[], Any]]] = {}
    for batch in (1, 2):
        inputs = make_inputs(batch)
        check(f"{label}, batch {batch}", forward_ours(ours, inputs), forward_theirs(theirs, inputs))
        cases[f"{label}, batch {batch}"] = {
            "ours": lambda inputs=inputs: forward_ours(ours, inputs),
            "diffusers": lambda inputs=inputs: forward_theirs(theirs, inputs),
        }
    medians = interleaved(cases, repeats)
    return [(case, values["ours"], values["diffusers"]) for case, values in medians.items()]


def lora_effect(ours: Any, bare: torch.Tensor) -> float:
    """How far the LoRA moves our batch-1 output (so that the LoRA check is not vacuous)."""
    return (forward_ours(ours, make_inputs(1)) - bare).abs().max().item()


def main() -> None:
    """Build both UNets with the same weights, check, time, then the same with a LoRA; print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lora-repeats", type=int, default=5, help="0 skips the LoRA section")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import diffusers
    from diffusers.utils import logging as diffusers_logging
    from refiners_sd import SD1UNet

    diffusers_logging.set_verbosity_error()
    rows: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory) / "unet"
        theirs = build_diffusers_unet()
        theirs.save_pretrained(folder)
        ours = SD1UNet.from_diffusers(folder).eval()
        print(
            f"SD1.5 UNet fp32 CPU, {LATENT}x{LATENT} latents, {TOKENS} tokens, torch {torch.__version__}, "
            f"diffusers {diffusers.__version__}, {torch.get_num_threads()} threads, inference_mode"
        )
        rows += section(ours, theirs, "UNet", args.repeats)
        if args.lora_repeats:
            from lora import diffusers_host, write_kohya_lora
            from refiners_lora import LoraManager

            bare = forward_ours(ours, make_inputs(1))
            path = Path(directory) / "lora.safetensors"
            layers = write_kohya_lora(theirs, path, args.rank)
            LoraManager(ours).add("bench", path)
            diffusers_host(theirs).load_lora_weights(str(path), adapter_name="bench")
            print(f"- LoRA rank {args.rank} on {layers} layers moves the output by {lora_effect(ours, bare):.1e}")
            rows += section(ours, theirs, f"UNet + LoRA r{args.rank} unfused", args.lora_repeats)
        del ours, theirs
        gc.collect()

    print()
    print(f"median of {args.repeats} (LoRA: {args.lora_repeats}) interleaved rounds after 1 warm-up")
    print()
    print("| forward | ours (s) | diffusers (s) | diffusers / ours |")
    print("|---|---:|---:|---:|")
    for label, ours_time, theirs_time in rows:
        print(f"| {label} | {ours_time:.3f} | {theirs_time:.3f} | {theirs_time / ours_time:.2f}x |")


if __name__ == "__main__":
    main()
