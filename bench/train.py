"""Training-step time and peak memory: ``refiners_train.Trainer`` on a LoRA-patched UNet vs a plain diffusers + peft
loop doing the same work.

Both sides train a rank-4 LoRA (alpha 4) on the attention projections of the UNet (``to_q``, ``to_k``, ``to_v``,
``to_out.0``: what diffusers' ``train_text_to_image_lora.py`` targets and what ``refiners train lora`` creates),
fp32 on CPU, batch 1, AdamW (lr 1e-4, weight decay 1e-2), gradients clipped to norm 1, epsilon-prediction MSE
at a random timestep of SD's noise schedule, on fixed random latents and text embeddings (the VAE and the text
encoder are outside the measured step, as with cached latents and a frozen text encoder).

- ours: a ``StableDiffusion1`` holding the UNet, ``refiners_lora.training.create_lora`` (the ``lora`` family's
  ``create``), and ``Trainer.train_step`` with an objective calling ``pipeline.training_loss``.
- diffusers: ``UNet2DConditionModel`` + ``unet.add_adapter(LoraConfig(...))`` (peft), ``DDPMScheduler.add_noise``,
  ``unet(...).sample``, ``F.mse_loss``, ``clip_grad_norm_``, ``AdamW.step``: the loop of the example script.

Sizes: ``tiny`` (the demo UNet, 16x16 latents) and ``full`` (SD1.5's UNet, random weights, ``--latent`` x
``--latent`` latents: 32 is 256 px images, 64 is 512 px). Each side runs in its own process (so that peak
memory is its own): build, one warm-up step, then ``--steps`` timed steps; memory is the peak resident set
size sampled every 5 ms during the timed steps. Median wall-clock and CPU (process) time per step are printed:
on a shared machine the CPU time is the steadier of the two.

Run: ``python bench/train.py [--sizes tiny full] [--steps 3] [--latent 32] [--threads 2]``. Informative only;
full size takes a few minutes on 2 cores and about 8 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

RANK = 4
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


class PeakMemory:
    """Samples this process's resident set size in a thread; ``peak`` is the largest seen (bytes)."""

    def __init__(self) -> None:
        import psutil

        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def unet_config(size: str) -> dict[str, Any]:
    from refiners_sd import SD15_UNET_CONFIG
    from refiners_sd.demo import DEMO_UNET_CONFIG

    return dict(DEMO_UNET_CONFIG if size == "tiny" else SD15_UNET_CONFIG)


def inputs(size: str, latent: int) -> tuple[torch.Tensor, torch.Tensor]:
    side = 16 if size == "tiny" else latent
    width = int(unet_config(size)["cross_attention_dim"])
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, 4, side, side, generator=generator), torch.randn(1, 77, width, generator=generator)


def build_ours(size: str, latent: int) -> Any:
    """A ``Trainer`` step closure on our UNet with a fresh LoRA."""
    from refiners_lora.training import create_lora
    from refiners_sd import SD1UNet
    from refiners_sd.clip import CLIPTextConfig, CLIPTextEncoderL
    from refiners_sd.demo import DEMO_TEXT_CONFIG, DEMO_VAE_CONFIG
    from refiners_sd.pipeline import StableDiffusion1
    from refiners_sd.pipeline.training import TrainingConditioning
    from refiners_sd.vae import AutoencoderConfig, SD1Autoencoder
    from refiners_train.schedule import BatchPlan, sample_generator
    from refiners_train.trainer import Trainer, TrainingOptions
    from unet_forward import materialise

    with torch.device("meta"):
        unet = SD1UNet(unet_config(size))
    materialise(unet, seed=0)
    text_encoder = CLIPTextEncoderL(CLIPTextConfig(**DEMO_TEXT_CONFIG))
    pipeline = StableDiffusion1(
        unet, text_encoder, None, SD1Autoencoder(AutoencoderConfig(**DEMO_VAE_CONFIG)), SCHEDULE
    )  # type: ignore[arg-type]
    create_lora(pipeline, rank=RANK, alpha=RANK)
    latents, text = inputs(size, latent)
    conditioning = TrainingConditioning(text)

    def objective(indices: list[int], positions: list[int], step: int) -> torch.Tensor:
        generator = sample_generator(0, step, positions[0])
        timesteps = torch.randint(0, 1000, (1,), generator=generator)
        noise = torch.randn(latents.shape, generator=generator)
        return pipeline.training_loss(latents, conditioning, noise, timesteps)

    options = TrainingOptions(steps=10**6, lr=1e-4, weight_decay=1e-2, max_grad_norm=1.0)
    trainer = Trainer(unet, objective, BatchPlan([[0]], 1, seed=0), options)
    return trainer.train_step


def build_diffusers(size: str, latent: int) -> Any:
    """The same step as diffusers' text-to-image LoRA example, on a diffusers UNet with a peft LoRA."""
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig
    from unet_forward import materialise

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config(size))
    materialise(unet, seed=0)
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian", target_modules=TARGETS))
    parameters = [parameter for parameter in unet.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-4, weight_decay=1e-2)
    scheduler = DDPMScheduler(**SCHEDULE)
    latents, text = inputs(size, latent)
    generator = torch.Generator().manual_seed(0)
    unet.train()

    def step() -> float:
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, 1000, (1,), generator=generator)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        prediction = unet(noisy, timesteps, text, return_dict=False)[0]
        loss = F.mse_loss(prediction.float(), noise.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    return step


def measure(side: str, size: str, steps: int, latent: int) -> dict[str, Any]:
    """Build one side, warm up, time ``steps`` steps; returns step times and peak memory."""
    step = (build_ours if side == "ours" else build_diffusers)(size, latent)
    step()
    times, cpu = [], []
    with PeakMemory() as memory:
        for _ in range(steps):
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return {"times": times, "cpu": cpu, "peak": memory.peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "full"], choices=["tiny", "full"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("SIDE", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.steps, args.latent)))
        return
    import diffusers

    print(
        f"LoRA rank {RANK} on to_q/to_k/to_v/to_out.0, fp32 CPU, batch 1, torch {torch.__version__}, diffusers "
        f"{diffusers.__version__}, {args.threads} threads, median of {args.steps} steps after 1 warm-up; full-size "
        f"latents {args.latent}x{args.latent}"
    )
    print(
        "| UNet | step ours (s) | step diffusers+peft (s) | ours / diffusers | peak ours (GB) | peak diffusers (GB) ",
        end="",
    )
    print("| ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    here = Path(__file__).resolve().parent
    for size in args.sizes:
        results = {}
        for side in ("ours", "diffusers"):
            command = [sys.executable, str(Path(__file__).resolve()), "--child", side, size, "--steps", str(args.steps)]
            command += ["--latent", str(args.latent), "--threads", str(args.threads)]
            env = {**os.environ, "PYTHONPATH": str(here)}
            output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
            results[side] = json.loads(output.strip().splitlines()[-1])
        ours, theirs = (statistics.median(results[side]["times"]) for side in ("ours", "diffusers"))
        cpu_ours, cpu_theirs = (statistics.median(results[side]["cpu"]) for side in ("ours", "diffusers"))
        peak_ours, peak_theirs = (results[side]["peak"] / 1e9 for side in ("ours", "diffusers"))
        print(
            f"| {size} | {ours:.3f} | {theirs:.3f} | {ours / theirs:.2f}x | {cpu_ours:.3f} | {cpu_theirs:.3f} | "
            f"{cpu_ours / cpu_theirs:.2f}x | {peak_ours:.2f} | {peak_theirs:.2f} | {peak_ours / peak_theirs:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
