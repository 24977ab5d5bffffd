"""Tiny random Stable Diffusion pipelines built with diffusers and transformers, shared by the pipeline tests.

The parts (text encoders, VAE, UNet, tokenizers) get noise on every weight, so no zero-initialised layer
hides a mistake. :func:`sd15_pipeline` and :func:`sdxl_pipeline` assemble them into diffusers pipelines
(``save_pretrained`` writes the folder our loaders read); :func:`diffusers_latents` and :func:`compare`
are the parity check every pipeline test makes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
from refiners_sd.clip.bpe import write_tokenizer_files
from refiners_sd.demo import DEMO_SCHEDULER_CONFIG, DEMO_UNET_CONFIG, DEMO_VAE_CONFIG, perturb, write_tiny_tokenizer
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
from transformers import CLIPTokenizer as TransformersCLIPTokenizer

TOLERANCE = 1e-3
SCHEDULERS: dict[str, Any] = {
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "dpm++2m": DPMSolverMultistepScheduler,
}
# SD1.5 ships a PNDM config; pipelines swap schedulers with from_config, keeping the schedule fields.
SD15_SCHEDULER = {**DEMO_SCHEDULER_CONFIG, "_class_name": "PNDMScheduler", "skip_prk_steps": True}
SDXL_SCHEDULER = {**SD15_SCHEDULER, "_class_name": "EulerDiscreteScheduler", "timestep_spacing": "leading"}
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


def perturbed(model: torch.nn.Module, seed: int) -> Any:
    """``model`` with noise added to every parameter (seeded), in eval mode."""
    perturb(model, torch.Generator().manual_seed(seed))
    return model.eval()


def text_model(hidden: int, projection: int | None = None, seed: int = 0, *, clip_vocabulary: bool = False) -> Any:
    """A 2-layer CLIP text encoder (with a projection of ``projection`` when given, as SDXL's second one).

    ``clip_vocabulary``: CLIP's real 49,408 tokens and 64 channels per head (so the tokenizer bundled with
    refiners-sd fits, and single files look real); else a 128-token vocabulary and 4 heads.
    """
    config = CLIPTextConfig(
        vocab_size=49408 if clip_vocabulary else 128,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=hidden // 64 if clip_vocabulary else 4,
        max_position_embeddings=77,
        bos_token_id=49406 if clip_vocabulary else 0,
        eos_token_id=2,  # the legacy value Stable Diffusion's configs carry (pooling by argmax)
        pad_token_id=1,
        projection_dim=projection or 512,
        hidden_act="gelu" if projection else "quick_gelu",
    )
    torch.manual_seed(seed)
    model = CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)
    return perturbed(model, seed)


def vae(**config: Any) -> AutoencoderKL:
    """A VAE of the demo configuration (four blocks: 8x8 pixels per latent), ``config`` overriding it."""
    config = {**DEMO_VAE_CONFIG, **config}
    blocks = len(config["block_out_channels"])
    torch.manual_seed(3)
    model = AutoencoderKL(
        **config, down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks
    )
    return perturbed(model, 3)


def unet(config: dict[str, Any]) -> UNet2DConditionModel:
    """A UNet of ``config`` (keys starting with ``_`` ignored)."""
    torch.manual_seed(4)
    return perturbed(UNet2DConditionModel(**{k: v for k, v in config.items() if not k.startswith("_")}), 4)


def tokenizer(folder: Path, pad_token: str | None = None) -> TransformersCLIPTokenizer:
    """A CLIP tokenizer of the tiny demo vocabulary, written to ``folder``."""
    return TransformersCLIPTokenizer.from_pretrained(str(write_tiny_tokenizer(folder, pad_token=pad_token)))


def clip_tokenizer(folder: Path, pad_token: str = "<|endoftext|>") -> TransformersCLIPTokenizer:
    """CLIP's real tokenizer (the files bundled with refiners-sd), written to ``folder``."""
    write_tokenizer_files(folder)
    return TransformersCLIPTokenizer.from_pretrained(str(folder), pad_token=pad_token, model_max_length=77)


def sd15_pipeline(root: Path) -> StableDiffusionPipeline:
    """A tiny SD1.5 pipeline (demo UNet, 32-wide text encoder, DDIM); tokenizer files go under ``root``."""
    return StableDiffusionPipeline(
        vae=vae(),
        text_encoder=text_model(32),
        tokenizer=tokenizer(root / "tokenizer_source"),
        unet=unet(DEMO_UNET_CONFIG),
        scheduler=DDIMScheduler.from_config(SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def sdxl_pipeline(root: Path) -> StableDiffusionXLPipeline:
    """A tiny SDXL pipeline (two 16-wide text encoders, the second with a projection; Euler)."""
    return StableDiffusionXLPipeline(
        vae=vae(),
        text_encoder=text_model(16, seed=1),
        text_encoder_2=text_model(16, projection=16, seed=2),
        tokenizer=tokenizer(root / "tokenizer_source"),
        tokenizer_2=tokenizer(root / "tokenizer_2_source", pad_token="!"),
        unet=unet(SDXL_UNET),
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER),
        add_watermarker=False,
    )


def diffusers_latents(pipeline: Any, solver: str, **options: Any) -> torch.Tensor:
    """diffusers' final latents (``output_type="latent"``) with ``solver``; ``options`` hold the seed."""
    pipeline.scheduler = SCHEDULERS[solver].from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator(device="cpu").manual_seed(options.pop("seed"))
    with torch.no_grad():
        return pipeline(**options, generator=generator, output_type="latent").images


def compare(expected: torch.Tensor, actual: torch.Tensor, tolerance: float = TOLERANCE) -> float:
    """Assert equal shapes and a max abs difference below ``tolerance``; return (and print) it."""
    assert actual.shape == expected.shape
    difference = (actual - expected).abs().max().item()
    print(f"max |diff| {difference:.2e}")
    assert difference < tolerance, f"max |diff| {difference:.2e}"
    return difference
