"""LoRA add / fuse / unfuse / remove: refiners-lora against diffusers on a full-size SD1.5 UNet.

Both UNets are fp32 on CPU, built on the ``meta`` device then materialised with random weights. A
random rank-8 kohya LoRA covering every attention projection (``to_q/k/v/out``) and every ResNet
convolution (``conv1``, ``conv2``, ``conv_shortcut``) is written once; each library then loads that
same file, fuses it, unfuses it and unloads it. After one warm-up round, each step is timed
``--repeats`` times (fresh load each round, the two libraries interleaved) and the median is
printed, with the ratio diffusers / refiners-lora.

``--part`` picks further tables (default: ``basic``, the table above; ``all`` runs every part):

- ``stacked``: UNet forward with 1 and with 8 unfused LoRAs on the same layers, refiners-lora (one
  concatenated down/up pair per layer) against diffusers ``set_adapters`` with 8 adapters;
- ``algorithms``: load + fuse of a LoHa, a LoKr and a DoRA file against peft (the same config
  injected into the diffusers UNet, weights set, ``merge``);
- ``hotswap``: replacing a loaded LoRA by another file, refiners-lora ``hotswap`` against diffusers
  ``load_lora_weights(..., hotswap=True)``.

Run: ``python bench/lora.py [--rank 8] [--repeats 5] [--threads N] [--part all] [--size 32]``.
Informative only.
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


def table(title: str, rows: dict[str, tuple[float, float]], theirs_name: str) -> None:
    """Print ``rows`` (step -> (ours, theirs) seconds) as a markdown table."""
    print(title)
    print(f"| step | refiners-lora (s) | {theirs_name} (s) | {theirs_name} / refiners-lora |")
    print("|---|---:|---:|---:|")
    for step, (ours, theirs) in rows.items():
        print(f"| {step} | {ours:.4f} | {theirs:.4f} | {theirs / ours:.1f}x |")


def unet_inputs(size: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "sample": torch.randn(1, 4, size, size, generator=generator),
        "timestep": torch.tensor([500]),
        "encoder_hidden_states": torch.randn(1, 77, 768, generator=generator),
    }


@torch.no_grad()
def forward_ours(unet: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    unet.set_timestep(inputs["timestep"])
    unet.set_clip_text_embedding(inputs["encoder_hidden_states"])
    return unet(inputs["sample"])


@torch.no_grad()
def forward_diffusers(unet: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return unet(inputs["sample"], inputs["timestep"], encoder_hidden_states=inputs["encoder_hidden_states"]).sample


def bench_stacked(ours_unet: Any, theirs_unet: Any, folder: Path, rank: int, repeats: int, size: int) -> None:
    """1 vs 8 unfused LoRAs on the same layers: forward time of each library."""
    from refiners_lora import LoraManager

    paths = []
    for index in range(8):
        path = folder / f"stack{index}.safetensors"
        write_kohya_lora(theirs_unet, path, rank)
        paths.append(path)
    inputs = unet_inputs(size)
    manager = LoraManager(ours_unet)
    host = diffusers_host(theirs_unet)
    manager.add("s0", paths[0])
    host.load_lora_weights(str(paths[0]), adapter_name="s0")
    one = rounds(
        {
            "ours": {"fwd": lambda: forward_ours(ours_unet, inputs)},
            "theirs": {"fwd": lambda: forward_diffusers(theirs_unet, inputs)},
        },
        repeats,
    )
    for index in range(1, 8):
        manager.add(f"s{index}", paths[index], scale=0.5)
        host.load_lora_weights(str(paths[index]), adapter_name=f"s{index}")
    host.set_adapters([f"s{index}" for index in range(8)], [1.0] + [0.5] * 7)
    eight = rounds(
        {
            "ours": {"fwd": lambda: forward_ours(ours_unet, inputs)},
            "theirs": {"fwd": lambda: forward_diffusers(theirs_unet, inputs)},
        },
        repeats,
    )
    manager.remove_all()
    host.unload_lora_weights()
    base = rounds(
        {
            "ours": {"fwd": lambda: forward_ours(ours_unet, inputs)},
            "theirs": {"fwd": lambda: forward_diffusers(theirs_unet, inputs)},
        },
        repeats,
    )
    rows = {
        "no LoRA": (base["ours"]["fwd"], base["theirs"]["fwd"]),
        "1 LoRA": (one["ours"]["fwd"], one["theirs"]["fwd"]),
        "8 LoRAs": (eight["ours"]["fwd"], eight["theirs"]["fwd"]),
    }
    table(f"UNet forward, latents {size}x{size}, rank {rank}, unfused", rows, "diffusers")
    print(
        f"8 LoRAs / 1 LoRA: refiners-lora {eight['ours']['fwd'] / one['ours']['fwd']:.2f}x, "
        f"diffusers {eight['theirs']['fwd'] / one['theirs']['fwd']:.2f}x"
    )


def peft_configs(unet: nn.Module, rank: int) -> dict[str, Any]:
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    targets = sorted(
        name
        for name, module in unet.named_modules()
        if name.endswith(TARGET_SUFFIXES) and isinstance(module, nn.Linear | nn.Conv2d)
    )
    return {
        "loha": LoHaConfig(r=rank, alpha=rank, target_modules=targets, init_weights=False),
        "lokr": LoKrConfig(r=rank, alpha=rank, target_modules=targets, decompose_both=True, init_weights=False),
        "dora": LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, use_dora=True, init_lora_weights=False),
    }


def algorithm_steps(
    kind: str, config: Any, path: Path, manager: Any, theirs_unet: nn.Module
) -> tuple[Callable[[], None], Callable[[], None]]:
    """One load + fuse + remove round of ``path`` through refiners-lora and through peft."""
    from peft import inject_adapter_in_model, set_peft_model_state_dict
    from peft.tuners.tuners_utils import BaseTunerLayer
    from safetensors.torch import load_file

    def ours_step() -> None:
        manager.add(kind, path)
        manager.fuse()
        manager.remove(kind)

    def theirs_step() -> None:
        model = inject_adapter_in_model(config, theirs_unet, adapter_name=kind)
        set_peft_model_state_dict(model, load_file(path), adapter_name=kind)
        layers = [module for module in model.modules() if isinstance(module, BaseTunerLayer)]
        for layer in layers:
            layer.merge(adapter_names=[kind])
        for layer in layers:
            layer.unmerge()
        unwrap_peft(model)

    return ours_step, theirs_step


def unwrap_peft(model: nn.Module) -> None:
    """Put every peft-wrapped layer's base layer back in its place."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, module.get_base_layer())


def bench_algorithms(ours_unet: Any, theirs_unet: Any, folder: Path, rank: int, repeats: int) -> None:
    """Load + fuse of LoHa / LoKr / DoRA files: refiners-lora against peft."""
    import json

    from peft import inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict
    from refiners_lora import LoraManager

    rows: dict[str, tuple[float, float]] = {}
    for kind, config in peft_configs(theirs_unet, rank).items():
        source = inject_adapter_in_model(config, theirs_unet, adapter_name="source")
        state = {
            key: value.contiguous() for key, value in get_peft_model_state_dict(source, adapter_name="source").items()
        }
        unwrap_peft(theirs_unet)
        path = folder / f"{kind}.safetensors"
        save_file(state, path, metadata={"lora_adapter_metadata": json.dumps(config.to_dict(), default=sorted)})
        ours_step, theirs_step = algorithm_steps(kind, config, path, LoraManager(ours_unet), theirs_unet)
        medians = rounds({"ours": {"step": ours_step}, "theirs": {"step": theirs_step}}, repeats)
        rows[f"{kind}: load + fuse + remove"] = (medians["ours"]["step"], medians["theirs"]["step"])
    table(f"LoHa / LoKr / DoRA rank {rank} on the attention projections and ResNet convolutions", rows, "peft")


def bench_hotswap(ours_unet: Any, theirs_unet: Any, folder: Path, rank: int, repeats: int) -> None:
    """Replacing a loaded LoRA by another file: refiners-lora ``hotswap`` against diffusers ``hotswap=True``."""
    from refiners_lora import LoraManager

    first, second = folder / "hot1.safetensors", folder / "hot2.safetensors"
    write_kohya_lora(theirs_unet, first, rank)
    write_kohya_lora(theirs_unet, second, rank)
    manager = LoraManager(ours_unet)
    manager.add_hotswappable("hot", first, max_rank=rank)
    host = diffusers_host(theirs_unet)
    host.enable_lora_hotswap(target_rank=rank)
    host.load_lora_weights(str(first), adapter_name="hot")
    files = [first, second]
    state = {"index": 0}

    def ours_step() -> None:
        state["index"] ^= 1
        manager.hotswap("hot", files[state["index"]])

    def theirs_step() -> None:
        host.load_lora_weights(str(files[state["index"]]), adapter_name="hot", hotswap=True)

    medians = rounds({"ours": {"swap": ours_step}, "theirs": {"swap": theirs_step}}, repeats)
    manager.remove_all()
    host.unload_lora_weights()
    table(
        f"hot-swap of a rank-{rank} LoRA file",
        {"hot-swap": (medians["ours"]["swap"], medians["theirs"]["swap"])},
        "diffusers",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--part", choices=["basic", "stacked", "algorithms", "hotswap", "all"], default="basic")
    parser.add_argument("--size", type=int, default=32, help="latent side for the forward timings")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.part != "basic":
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
        ours_unet, theirs_unet = build_refiners_unet(), build_diffusers_unet()
        with tempfile.TemporaryDirectory() as folder:
            if args.part in ("stacked", "all"):
                bench_stacked(ours_unet, theirs_unet, Path(folder), args.rank, args.repeats, args.size)
            if args.part in ("algorithms", "all"):
                bench_algorithms(ours_unet, theirs_unet, Path(folder), args.rank, args.repeats)
            if args.part in ("hotswap", "all"):
                bench_hotswap(ours_unet, theirs_unet, Path(folder), args.rank, args.repeats)
        if args.part != "all":
            return

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
