"""Text-to-image parity: refiners-sd's StableDiffusion1/XL against diffusers' pipelines on tiny random parts.

Each test builds a tiny pipeline with diffusers and transformers, saves it with ``save_pretrained``, loads it
with our ``from_diffusers`` and compares the final latents (``output_type="latent"``) for the same prompt,
solver, steps, guidance and seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from refiners_sd.demo import DEMO_SCHEDULER_CONFIG, DEMO_UNET_CONFIG, DEMO_VAE_CONFIG, write_tiny_tokenizer
from refiners_sd.pipeline import StableDiffusion1, StableDiffusionXL, classifier_free_guidance, load_pipeline
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
from transformers import CLIPTokenizer as TransformersCLIPTokenizer

TOLERANCE = 1e-3
SIZE = 64
SCHEDULERS: dict[str, Any] = {
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "dpm++2m": DPMSolverMultistepScheduler,
}
# SD1.5 ships a PNDM config; pipelines swap schedulers with from_config, keeping the schedule fields.
SD15_SCHEDULER = {**DEMO_SCHEDULER_CONFIG, "_class_name": "PNDMScheduler", "skip_prk_steps": True}
SDXL_SCHEDULER = {**SD15_SCHEDULER, "_class_name": "EulerDiscreteScheduler", "timestep_spacing": "leading"}


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Add noise to every parameter so that no zero-initialised layer hides a mistake."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model.eval()


def text_model(hidden: int, projection: int | None = None, seed: int = 0) -> torch.nn.Module:
    config = CLIPTextConfig(
        vocab_size=128,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
        projection_dim=projection or 512,
        hidden_act="gelu" if projection else "quick_gelu",
    )
    torch.manual_seed(seed)
    model = CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)
    return perturbed(model, seed)


def vae() -> AutoencoderKL:
    blocks = len(DEMO_VAE_CONFIG["block_out_channels"])
    torch.manual_seed(3)
    model = AutoencoderKL(
        **DEMO_VAE_CONFIG,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
    )
    return perturbed(model, 3)


def unet(config: dict[str, Any]) -> UNet2DConditionModel:
    torch.manual_seed(4)
    return perturbed(UNet2DConditionModel(**{k: v for k, v in config.items() if not k.startswith("_")}), 4)


def tokenizer(folder: Path, pad_token: str | None = None) -> TransformersCLIPTokenizer:
    return TransformersCLIPTokenizer.from_pretrained(str(write_tiny_tokenizer(folder, pad_token=pad_token)))


@pytest.fixture(scope="module")
def sd1_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sd1")
    pipeline = StableDiffusionPipeline(
        vae=vae(),
        text_encoder=text_model(32),
        tokenizer=tokenizer(root / "tokenizer_source"),
        unet=unet(DEMO_UNET_CONFIG),
        scheduler=DDIMScheduler.from_config(SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(root / "pipeline")
    return root / "pipeline"


SDXL_UNET: dict[str, Any] = {
    "block_out_channels": (32, 64),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "layers_per_block": 1,
    "transformer_layers_per_block": (1, 2),
    "attention_head_dim": (2, 4),
    "cross_attention_dim": 32,  # 16 (text encoder) + 16 (text encoder 2)
    "norm_num_groups": 8,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 16 + 6 * 8,  # pooled projection + 6 time ids
    "sample_size": 8,
}


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sdxl")
    pipeline = StableDiffusionXLPipeline(
        vae=vae(),
        text_encoder=text_model(16, seed=1),
        text_encoder_2=text_model(16, projection=16, seed=2),
        tokenizer=tokenizer(root / "tokenizer_source"),
        tokenizer_2=tokenizer(root / "tokenizer_2_source", pad_token="!"),
        unet=unet(SDXL_UNET),
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER),
        add_watermarker=False,
    )
    pipeline.save_pretrained(root / "pipeline")
    return root / "pipeline"


def diffusers_latents(pipeline: Any, solver: str, **options: Any) -> torch.Tensor:
    pipeline.scheduler = SCHEDULERS[solver].from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    seed = options.pop("seed")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        return pipeline(**options, generator=generator, output_type="latent").images


def compare(expected: torch.Tensor, actual: torch.Tensor) -> float:
    assert actual.shape == expected.shape
    difference = (actual - expected).abs().max().item()
    print(f"max |diff| {difference:.2e}")
    assert difference < TOLERANCE, f"max |diff| {difference:.2e}"
    return difference


SD1_CASES = [
    ("ddim", 3, 7.5, None),
    ("euler", 3, 5.0, "blurry"),
    ("dpm++2m", 3, 7.5, None),
    ("ddim", 2, 1.0, None),  # no guidance: one UNet call on the prompt alone
]


@pytest.mark.parametrize(("solver", "steps", "guidance", "negative"), SD1_CASES)
def test_sd1_generate_matches_diffusers(
    sd1_folder: Path, solver: str, steps: int, guidance: float, negative: str | None
) -> None:
    reference = StableDiffusionPipeline.from_pretrained(sd1_folder)
    expected = diffusers_latents(
        reference,
        solver,
        prompt="a red cube",
        negative_prompt=negative,
        num_inference_steps=steps,
        guidance_scale=guidance,
        seed=7,
        height=SIZE,
        width=SIZE + 16,
    )
    model = StableDiffusion1.from_diffusers(sd1_folder, solver=solver)
    steps_seen: list[tuple[int, int]] = []
    actual = model.generate_latents(
        "a red cube",
        negative_prompt=negative,
        steps=steps,
        guidance=guidance,
        seed=7,
        height=SIZE,
        width=SIZE + 16,
        callback=lambda done, total: steps_seen.append((done, total)),
    )
    compare(expected, actual)
    assert steps_seen == [(i + 1, steps) for i in range(steps)]


@pytest.mark.parametrize(("solver", "negative"), [("euler", None), ("dpm++2m", "dark")])
def test_sdxl_generate_matches_diffusers(sdxl_folder: Path, solver: str, negative: str | None) -> None:
    reference = StableDiffusionXLPipeline.from_pretrained(sdxl_folder)
    options: dict[str, Any] = {"num_inference_steps": 3, "guidance_scale": 6.0, "height": SIZE, "width": SIZE}
    expected = diffusers_latents(reference, solver, prompt="a cube", negative_prompt=negative, seed=3, **options)
    model = load_pipeline(sdxl_folder, solver=solver)
    assert isinstance(model, StableDiffusionXL) and model.force_zeros_for_empty_prompt
    actual = model.generate_latents(
        "a cube", negative_prompt=negative, steps=3, guidance=6.0, seed=3, height=SIZE, width=SIZE
    )
    compare(expected, actual)


def test_generate_returns_an_image_of_the_requested_size(sd1_folder: Path) -> None:
    model = load_pipeline(sd1_folder)
    image = model.generate("a red cube", steps=2, seed=0, width=48, height=32)
    assert image.size == (48, 32) and image.mode == "RGB"
    with pytest.raises(ValueError, match="multiples of 8"):
        model.generate("a red cube", steps=1, width=50, height=32)


def test_guidance_formula() -> None:
    unconditional, conditional = torch.zeros(1, 2), torch.ones(1, 2)
    guided = classifier_free_guidance(torch.cat([unconditional, conditional]), 7.5)
    assert torch.equal(guided, torch.full((1, 2), 7.5))


def test_wrong_topology_and_missing_parts(sd1_folder: Path, sdxl_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="StableDiffusionXL"):
        StableDiffusion1.from_diffusers(sdxl_folder)
    with pytest.raises(ValueError, match="StableDiffusion1"):
        StableDiffusionXL.from_diffusers(sd1_folder)
    with pytest.raises(Exception, match="not a diffusers pipeline folder"):
        load_pipeline(tmp_path)
