"""GPU check, ready to run: parity with diffusers in float16 and bfloat16, then speed side by side.

For SD1.5 and SDXL, the bench writes a random single-file checkpoint at the real sizes (float16, with the
diffusers config folder that keeps diffusers offline; see ``bench/single_file.py``), then on ``--device``:

1. **parity**, in float16 and in bfloat16: both libraries load the same file (``refiners_sd.load_pipeline``,
   diffusers ``from_single_file(FILE, config=FOLDER)``); one UNet forward on the same inputs and a 3-step
   generation (same prompt, scheduler and seed) are compared: max |ours - diffusers| / max |diffusers|;
2. **speed**, in float16 (the first of ``--dtypes``): single-file load onto the device, UNet forward
   (batch 2, guidance), a ``--steps`` generation at 512 px (SD1.5) / 1024 px (SDXL) in iterations per
   second, and fusing a random rank-8 kohya LoRA into the UNet (``LoraManager.add`` + ``fuse`` vs
   ``load_lora_weights`` + ``fuse_lora``), with on CUDA the GPU memory each fuse added at its peak.

One table is printed. ``--tiny`` uses tiny models, 64 px and 2 steps, so that ``python bench/gpu.py --tiny
--device cpu`` runs in seconds (the test suite runs it that way; on the CPU the default dtype is float32,
float16 kernels being very slow there). Needs torch, transformers, diffusers, safetensors, peft and this
project installed (refiners-lora included); no network. On an H200 it should take a few minutes.

Run: ``python bench/gpu.py [--device cuda] [--tiny] [--dtypes float16 bfloat16] [--steps 30] [--repeats 5]
[--models sd15 sdxl] [--dir /tmp/refiners-bench]``. Exits with status 1 when a parity check fails.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lora import write_kohya_lora  # noqa: E402  (bench/lora.py)
from single_file import write_checkpoint  # noqa: E402  (bench/single_file.py)

PARITY_TOLERANCE = {torch.float16: 2e-2, torch.bfloat16: 8e-2, torch.float32: 1e-3}
PROMPT = "a lighthouse at dusk, oil painting"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, step: Callable[[], Any]) -> tuple[float, Any]:
    synchronize(device)
    start = time.perf_counter()
    result = step()
    synchronize(device)
    return time.perf_counter() - start, result


def timed_with_memory(device: torch.device, step: Callable[[], Any]) -> tuple[float, float | None]:
    """Seconds of ``step`` and, on CUDA, the device memory it added at its peak over what was allocated
    before, in GiB (``None`` elsewhere)."""
    if device.type != "cuda":
        return timed(device, step)[0], None
    synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(device, step)[0]
    return seconds, (torch.cuda.max_memory_allocated(device) - before) / 2**30


def median_time(device: torch.device, step: Callable[[], Any], repeats: int) -> float:
    step()  # warm-up (kernels, caches)
    return statistics.median(timed(device, step)[0] for _ in range(repeats))


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    ours, theirs = ours.float().cpu(), theirs.float().cpu()
    return (ours - theirs).abs().max().item() / max(theirs.abs().max().item(), 1e-12)


def unet_inputs(model: Any, latent: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    config = model.unet.config
    inputs = {
        "sample": torch.randn(2, config.in_channels, latent, latent, generator=generator),
        "timestep": torch.tensor([500, 500]),
        "encoder_hidden_states": torch.randn(2, 77, config.cross_attention_dim[0], generator=generator),
    }
    if model.topology == "sdxl":
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        inputs["text_embeds"] = torch.randn(2, pooled, generator=generator)
        size = float(latent * 8)
        inputs["time_ids"] = torch.tensor([[size, size, 0.0, 0.0, size, size]] * 2)
    return {k: v.to(device=device, dtype=dtype if v.is_floating_point() else None) for k, v in inputs.items()}


@torch.inference_mode()
def ours_unet(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    unet = model.unet
    unet.set_timestep(inputs["timestep"])
    unet.set_clip_text_embedding(inputs["encoder_hidden_states"])
    if "text_embeds" in inputs:
        unet.set_pooled_text_embedding(inputs["text_embeds"])
        unet.set_time_ids(inputs["time_ids"])
    return unet(inputs["sample"])


@torch.inference_mode()
def diffusers_unet(pipeline: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    added = {key: inputs[key] for key in ("text_embeds", "time_ids") if key in inputs}
    return pipeline.unet(
        inputs["sample"],
        inputs["timestep"],
        encoder_hidden_states=inputs["encoder_hidden_states"],
        added_cond_kwargs=added or None,
    ).sample


def ours_generate(model: Any, steps: int, size: int) -> torch.Tensor:
    return model.generate_latents(PROMPT, steps=steps, guidance=7.5, seed=1, width=size, height=size, solver="euler")


def diffusers_generate(pipeline: Any, steps: int, size: int) -> torch.Tensor:
    generator = torch.Generator(device="cpu").manual_seed(1)
    with torch.inference_mode():
        return pipeline(
            PROMPT, num_inference_steps=steps, guidance_scale=7.5, generator=generator, width=size, height=size,
            output_type="latent",
        ).images  # fmt: skip


def load_both(architecture: str, file: Path, folder: Path, device: torch.device, dtype: torch.dtype) -> tuple[Any, ...]:
    """``(ours, diffusers, our load seconds, diffusers load seconds)``, both onto ``device`` in ``dtype``."""
    import refiners_sd
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if architecture == "sdxl" else StableDiffusionPipeline
    ours_seconds, ours = timed(device, lambda: refiners_sd.load_pipeline(file, device=device, dtype=dtype))
    theirs_seconds, theirs = timed(
        device,
        lambda: cls.from_single_file(str(file), config=str(folder), local_files_only=True, torch_dtype=dtype).to(
            device
        ),
    )
    theirs.scheduler = EulerDiscreteScheduler.from_config(theirs.scheduler.config)
    theirs.set_progress_bar_config(disable=True)
    return ours, theirs, ours_seconds, theirs_seconds


def lora_fuse_cost(ours: Any, theirs: Any, device: torch.device) -> tuple[float, float, float | None, float | None]:
    """Seconds to load and fuse one random rank-8 kohya LoRA into each UNet, and on CUDA the device memory
    (GiB) each side added at its peak doing so (ours keeps the original weights in host memory)."""
    from refiners_lora import LoraManager

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "lora.safetensors"
        write_kohya_lora(theirs.unet, path, rank=8)
        manager = LoraManager(ours.unet)

        def ours_fuse() -> None:
            manager.add("bench", path)
            manager.fuse()

        def theirs_fuse() -> None:
            theirs.load_lora_weights(str(path), adapter_name="bench")
            theirs.fuse_lora()

        ours_seconds, ours_memory = timed_with_memory(device, ours_fuse)
        theirs_seconds, theirs_memory = timed_with_memory(device, theirs_fuse)
        manager.unfuse()
        manager.remove("bench")
        theirs.unfuse_lora()
        theirs.unload_lora_weights()
    return ours_seconds, theirs_seconds, ours_memory, theirs_memory


def check(
    architecture: str,
    file: Path,
    folder: Path,
    device: torch.device,
    dtype: torch.dtype,
    size: int,
    steps: int,
    repeats: int,
    speed: bool,
) -> tuple[str, list[str]]:
    """One parity row for ``dtype``, and with ``speed`` the speed rows."""
    ours, theirs, ours_load, theirs_load = load_both(architecture, file, folder, device, dtype)
    inputs = unet_inputs(ours, size // 8, device, dtype)
    unet_error = relative_error(ours_unet(ours, inputs), diffusers_unet(theirs, inputs))
    generate_error = relative_error(ours_generate(ours, 3, size), diffusers_generate(theirs, 3, size))
    tolerance = PARITY_TOLERANCE[dtype]
    verdict = "ok" if max(unet_error, generate_error) < tolerance else "FAIL"
    name = str(dtype).removeprefix("torch.")
    parity = f"| {architecture} | {name} | {unet_error:.1e} | {generate_error:.1e} | {tolerance:.0e} | {verdict} |"
    if not speed:
        return parity, []
    unet_ours = median_time(device, lambda: ours_unet(ours, inputs), repeats)
    unet_theirs = median_time(device, lambda: diffusers_unet(theirs, inputs), repeats)
    generate_ours = timed(device, lambda: ours_generate(ours, steps, size))[0]
    generate_theirs = timed(device, lambda: diffusers_generate(theirs, steps, size))[0]
    fuse_ours, fuse_theirs, memory_ours, memory_theirs = lora_fuse_cost(ours, theirs, device)
    measured: list[tuple[str, float, float, str]] = [
        ("single-file load", ours_load, theirs_load, "s"),
        (f"UNet forward, batch 2, {size // 8}x{size // 8} latents", unet_ours, unet_theirs, "s"),
        (f"generate {steps} steps at {size} px", steps / generate_ours, steps / generate_theirs, "it/s"),
        ("LoRA rank 8 load + fuse", fuse_ours, fuse_theirs, "s"),
    ]
    if memory_ours is not None and memory_theirs is not None:
        measured.append(("LoRA rank 8 load + fuse, peak added GPU memory", memory_ours, memory_theirs, "GiB"))
    rows = []
    for step, mine, reference, unit in measured:
        ratio = reference / max(mine, 1e-9) if unit in ("s", "GiB") else mine / reference
        rows.append(f"| {architecture} | {step} | {mine:.3f} {unit} | {reference:.3f} {unit} | {ratio:.2f}x |")
    return parity, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny models, 64 px, 2 steps (smoke run)")
    parser.add_argument("--steps", type=int, default=None, help="generation steps (default 30, tiny 2)")
    parser.add_argument("--repeats", type=int, default=None, help="UNet forward repeats (default 5, tiny 1)")
    parser.add_argument("--models", nargs="+", default=["sd15", "sdxl"], choices=["sd15", "sdxl"])
    parser.add_argument(
        "--dtypes", nargs="+", choices=["float16", "bfloat16", "float32"], default=None,
        help="parity dtypes, speed in the first (default: float16 bfloat16 on cuda, float32 on cpu)",
    )  # fmt: skip
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "refiners-bench")
    args = parser.parse_args()

    import diffusers
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    device = torch.device(args.device)
    steps = args.steps or (2 if args.tiny else 30)
    repeats = args.repeats or (1 if args.tiny else 5)
    names = args.dtypes or (["float16", "bfloat16"] if device.type == "cuda" else ["float32"])
    dtypes = [getattr(torch, name) for name in names]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"{name}, torch {torch.__version__}, diffusers {diffusers.__version__}"
        f"{', tiny models' if args.tiny else ''}; random weights, euler, guidance 7.5"
    )
    parity_rows: list[str] = []
    speed_rows: list[str] = []
    for architecture in args.models:
        file, folder = write_checkpoint(architecture, args.dir, tiny=args.tiny)
        size = 64 if args.tiny else (1024 if architecture == "sdxl" else 512)
        for index, dtype in enumerate(dtypes):
            parity, speed = check(architecture, file, folder, device, dtype, size, steps, repeats, index == 0)
            parity_rows.append(parity)
            speed_rows += speed
            if device.type == "cuda":
                torch.cuda.empty_cache()
    failures = sum(row.endswith("FAIL |") for row in parity_rows)
    print()
    print("| model | dtype | UNet forward rel. error | 3-step latents rel. error | tolerance | parity |")
    print("|---|---|---:|---:|---:|---|")
    print("\n".join(parity_rows))
    print()
    print(f"| model | step ({names[0]}) | ours | diffusers | ours faster by |")
    print("|---|---|---:|---:|---:|")
    print("\n".join(speed_rows))
    if failures:
        print(f"\n{failures} parity check(s) failed")
        sys.exit(1)


if __name__ == "__main__":
    main()
