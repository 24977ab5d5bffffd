"""LoRA add / fuse / unfuse / remove: refiners-lora against diffusers on a full-size SD1.5 UNet.

Both UNets are fp32 on CPU, built on the ``meta`` device then materialised with random weights. A
random rank-8 kohya LoRA covering every attention projection (``to_q/k/v/out``) and every ResNet
convolution (``conv1``, ``conv2``, ``conv_shortcut``) is written once; each library then loads that
same file, fuses it, unfuses it and unloads it. After one warm-up round, each step is timed
``--repeats`` times (fresh load each round, the two libraries interleaved) and the median is
printed, with the ratio diffusers / refiners-lora.

Run: ``python bench/lora.py [--rank 8] [--repeats 5] [--threads N]``. Informative only.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

TARGET_SUFFIXES = (".to_q", ".to_k", ".to_v", ".to_out.0", ".conv1", ".conv2", ".conv_shortcut")


@torch.no_grad()
def materialise(model: nn.Module, seed: int) -> nn.Module:
    """Give a meta-built model real CPU storage filled with small random values."""
    model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    for parameter in model.parameters():
        parameter.normal_(0.0, 0.02, generator=generator)
    for buffer in model.buffers():
        if buffer.is_floating_point():
            buffer.zero_()
    return model.eval()


def build_refiners_unet() -> nn.Module:
    """Full-size SD1.5 UNet of refiners-sd, built on meta then materialised."""
    from refiners_sd import SD1UNet

    return materialise(SD1UNet(device="meta"), seed=0)


def build_diffusers_unet() -> nn.Module:
    """Full-size SD1.5 diffusers UNet from its config, built on meta then materialised."""
    from diffusers import UNet2DConditionModel
    from refiners_sd import SD15_UNET_CONFIG

    with torch.device("meta"):
        model = UNet2DConditionModel.from_config(SD15_UNET_CONFIG)
    return materialise(model, seed=0)


def write_kohya_lora(unet: nn.Module, path: Path, rank: int) -> int:
    """A random kohya LoRA (``alpha = rank / 2``) for the attention projections and ResNet convs of a
    diffusers UNet; returns the number of target layers."""
    generator = torch.Generator().manual_seed(1)
    state: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if not name.endswith(TARGET_SUFFIXES) or not isinstance(module, nn.Linear | nn.Conv2d):
            continue
        key = "lora_unet_" + name.replace(".", "_")
        weight = module.weight
        state[f"{key}.lora_down.weight"] = 0.01 * torch.randn(rank, *weight.shape[1:], generator=generator)
        up_shape = (weight.shape[0], rank) + ((1, 1) if weight.dim() == 4 else ())
        state[f"{key}.lora_up.weight"] = 0.01 * torch.randn(*up_shape, generator=generator)
        state[f"{key}.alpha"] = torch.tensor(rank / 2)
    save_file(state, path)
    return len(state) // 3


def diffusers_host(unet: nn.Module) -> Any:
    """An object with the LoRA methods of a diffusers SD pipeline (its loader mixin) over a bare UNet."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    class Host(StableDiffusionLoraLoaderMixin):
        def __init__(self) -> None:
            self.unet = unet
            self.text_encoder = None
            self.hf_device_map = None

        @property
        def components(self) -> dict[str, Any]:
            return {"unet": self.unet}

    return Host()


@torch.no_grad()
def check_same_fused_delta(ours_unet: nn.Module, manager: Any, theirs_unet: nn.Module, host: Any, path: Path) -> None:
    """Both libraries must move the same base weights by the same delta (alpha honoured the same way)."""
    from refiners_sd import diffusers_module_map

    names = ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "up_blocks.3.resnets.2.conv1"]
    ours_layers = diffusers_module_map(ours_unet)
    theirs_layers = dict(theirs_unet.named_modules())
    before = {name: (ours_layers[name].weight.clone(), theirs_layers[name].weight.clone()) for name in names}
    manager.add("check", path)
    manager.fuse()
    host.load_lora_weights(str(path), adapter_name="check")
    host.fuse_lora()
    for name, (ours_before, theirs_before) in before.items():
        theirs_after = theirs_layers[name].base_layer.weight if hasattr(theirs_layers[name], "base_layer") else None
        theirs_after = theirs_after if theirs_after is not None else theirs_layers[name].weight
        ours_delta = ours_layers[name].weight - ours_before
        theirs_delta = theirs_after - theirs_before
        error = (ours_delta - theirs_delta).abs().max().item()
        assert error < 1e-6, f"{name}: fused deltas differ by {error}"
    manager.remove("check")
    host.unfuse_lora()
    host.unload_lora_weights()


def timed(step: Callable[[], Any]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def rounds(
    libraries: dict[str, dict[str, Callable[[], Any]]], repeats: int, warmup: int = 1
) -> dict[str, dict[str, float]]:
    """Run each library's steps in order, libraries interleaved round by round; ``warmup`` rounds are
    not counted. Returns the median seconds of each step of each library."""
    times: dict[str, dict[str, list[float]]] = {
        library: {step: [] for step in steps} for library, steps in libraries.items()
    }
    for round_index in range(warmup + repeats):
        for library, steps in libraries.items():
            for step, run in steps.items():
                elapsed = timed(run)
                if round_index >= warmup:
                    times[library][step].append(elapsed)
    return {
        library: {step: statistics.median(values) for step, values in steps.items()} for library, steps in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import diffusers
    from diffusers.utils import logging as diffusers_logging
    from refiners_lora import LoraManager

    diffusers_logging.set_verbosity_error()  # the missing text encoder warning on every load
    ours_unet = build_refiners_unet()
    theirs_unet = build_diffusers_unet()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "lora.safetensors"
        layers = write_kohya_lora(theirs_unet, path, args.rank)
        manager = LoraManager(ours_unet)
        host = diffusers_host(theirs_unet)
        medians = rounds(
            {
                "ours": {
                    "add": lambda: manager.add("bench", path),
                    "fuse": manager.fuse,
                    "unfuse": manager.unfuse,
                    "remove": lambda: manager.remove("bench"),
                },
                "diffusers": {
                    "add": lambda: host.load_lora_weights(str(path), adapter_name="bench"),
                    "fuse": host.fuse_lora,
                    "unfuse": host.unfuse_lora,
                    "remove": host.unload_lora_weights,
                },
            },
            args.repeats,
        )
        check_same_fused_delta(ours_unet, manager, theirs_unet, host, path)
    ours, theirs = medians["ours"], medians["diffusers"]
    print(
        f"SD1.5 UNet fp32 CPU, kohya LoRA rank {args.rank} on {layers} layers, torch {torch.__version__}, "
        f"diffusers {diffusers.__version__}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats} after 1 warm-up"
    )
    print("| step | refiners-lora (s) | diffusers (s) | diffusers / refiners-lora |")
    print("|---|---:|---:|---:|")
    for step in ours:
        print(f"| {step} | {ours[step]:.4f} | {theirs[step]:.4f} | {theirs[step] / ours[step]:.1f}x |")


if __name__ == "__main__":
    main()
