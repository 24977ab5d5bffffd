"""refiners-sd's training step (``TrainablePipeline``) equals diffusers' text-to-image training loss, SD1 and SDXL;
an SDXL LoRA with both text encoders trains and loads in diffusers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
from refiners_sd.pipeline import load_pipeline
from refiners_train.lora import train_lora
from tiny_pipelines import sdxl_pipeline
from train_fixtures import lora_config, one_thread, tiny_base, toy_data  # noqa: F401

PROMPTS = ["a red square", "a blue square"]


@pytest.fixture(scope="module")
def sdxl_base(tmp_path_factory: pytest.TempPathFactory) -> Path:

    root = tmp_path_factory.mktemp("sdxl")
    pipeline = sdxl_pipeline(root)
    pipeline.save_pretrained(root / "pipeline")
    return root / "pipeline"


def _diffusers_loss(pipe: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The loss of diffusers' train_text_to_image(_lora/_sdxl) examples, per sample."""
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    extra: dict[str, Any] = {}
    if isinstance(pipe, StableDiffusionXLPipeline):
        embeds, _, pooled, _ = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=False)
        size = latents.shape[-1] * 8
        time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=embeds.dtype).repeat(len(PROMPTS), 1)
        extra["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
    else:
        embeds = pipe.encode_prompt(PROMPTS, "cpu", 1, do_classifier_free_guidance=False)[0]
    prediction = pipe.unet(noisy, timesteps, embeds, return_dict=False, **extra)[0]
    return F.mse_loss(prediction.float(), noise.float(), reduction="none").mean(dim=[1, 2, 3])


@pytest.mark.parametrize("which", ["sd15", "sdxl"])
def test_training_loss_matches_diffusers(which: str, tiny_base: Path, sdxl_base: Path) -> None:  # noqa: F811
    folder = tiny_base if which == "sd15" else sdxl_base
    host = StableDiffusionPipeline if which == "sd15" else StableDiffusionXLPipeline
    pipe = host.from_pretrained(str(folder))
    ours = load_pipeline(folder)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    latents = ours.encode_images(images)
    expected_latents = pipe.vae.encode(images * 2 - 1).latent_dist.mean * pipe.vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
    timesteps = torch.tensor([17, 803])
    with torch.no_grad():
        loss = ours.training_loss(latents, ours.encode_prompts(PROMPTS), noise, timesteps)
        expected = _diffusers_loss(pipe, expected_latents, noise, timesteps)
    print(f"{which}: loss {loss.tolist()} vs diffusers {expected.tolist()}")
    assert torch.allclose(latents, expected_latents, atol=1e-4)
    assert torch.allclose(loss, expected, rtol=1e-4, atol=1e-5)
    assert isinstance(ours.num_train_timesteps, int) and ours.num_train_timesteps == 1000


def test_sdxl_lora_with_both_text_encoders_loads_in_diffusers(sdxl_base: Path, toy_data: Path, tmp_path: Path) -> None:  # noqa: F811
    from safetensors import safe_open

    output = tmp_path / "sdxl.safetensors"
    train_lora(lora_config(sdxl_base, toy_data, output, steps=2, batch_size=2, text_encoder=True, lr=3e-2))
    with safe_open(str(output), "pt") as handle:
        keys = list(handle.keys())
        assert handle.metadata()["ss_base_model_version"] == "sdxl_base_v1-0"
    assert {key.split("_")[1] for key in keys} == {"unet", "te1", "te2"}
    pipe = StableDiffusionXLPipeline.from_pretrained(str(sdxl_base))
    pipe.load_lora_weights(str(output))
    assert any("lora_A" in name for name, _ in pipe.text_encoder_2.named_parameters())
