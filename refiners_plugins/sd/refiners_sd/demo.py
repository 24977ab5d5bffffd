"""A tiny, randomly initialised Stable Diffusion 1.5-topology pipeline, built with this package's own models.

It exercises the whole text-to-image flow (tokenizer, text encoder, UNet, VAE, solver) on a CPU in seconds,
with no download: :func:`build_tiny_base` writes a diffusers pipeline folder (the ``sd15`` family's ``demo``).
Adapter families write their own demo weights for it through their ``demo`` hook (``refiners demo-assets``);
this module imports no family. The images it makes are noise-like, not art.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "DEMO_SCHEDULER_CONFIG",
    "DEMO_TEXT_CONFIG",
    "DEMO_UNET_CONFIG",
    "DEMO_VAE_CONFIG",
    "build_tiny_base",
    "perturb",
    "write_tiny_tokenizer",
]

DEMO_UNET_CONFIG: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "block_out_channels": [32, 64],
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "norm_num_groups": 8,
    "in_channels": 4,
    "out_channels": 4,
    "sample_size": 8,
}
"""SD1.5's UNet topology (cross-attention down blocks, one plain block), a few thousand times smaller."""

DEMO_VAE_CONFIG: dict[str, Any] = {
    "block_out_channels": (8, 8, 16, 16),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
}
"""Four blocks like the real VAE, so one latent pixel is 8x8 image pixels (64x64 images by default)."""

DEMO_TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 128,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
}

DEMO_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDIMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "clip_sample": False,
}
"""Stable Diffusion 1.5's noise schedule."""

_MERGES = ("r e", "re d</w>", "c u", "cu b", "cub e</w>")


def write_tiny_tokenizer(folder: str | Path, pad_token: str | None = None) -> Path:
    """Write a small but valid CLIP BPE tokenizer (``vocab.json``, ``merges.txt``, ``tokenizer_config.json``).

    Letters, digits and common punctuation, each alone and word-final (``</w>``), a few merges, then the
    start and end tokens (the end token has the highest id, as in CLIP). ``pad_token`` sets a padding token
    other than the end token (SDXL's second tokenizer pads with ``!``).
    """
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    symbols = list(string.ascii_lowercase + string.digits + "!,.-'?")
    vocab: dict[str, int] = {}
    for symbol in symbols + [f"{symbol}</w>" for symbol in symbols]:
        vocab[symbol] = len(vocab)
    for merge in _MERGES:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (target / "vocab.json").write_text(json.dumps(vocab, indent=1), encoding="utf-8")
    (target / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_MERGES) + "\n", encoding="utf-8")
    config: dict[str, Any] = {"model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}
    if pad_token is not None:
        config["pad_token"] = pad_token
    (target / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return target


def perturb(module: torch.nn.Module, generator: torch.Generator, amount: float = 0.05) -> None:
    """Add noise to every weight so that no layer stays at a trivial init (zeros, ones); demo writers use it."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * amount)


def build_tiny_base(folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny SD1.5-topology diffusers pipeline folder (unet, text_encoder, tokenizer, vae, scheduler)."""
    from refiners_sd.clip import CLIPTextConfig, CLIPTextEncoderL
    from refiners_sd.unet.sd1 import SD1UNet
    from refiners_sd.vae import AutoencoderConfig, SD1Autoencoder

    root = Path(folder)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    tokenizer = write_tiny_tokenizer(root / "tokenizer")
    vocab_size = len(json.loads((tokenizer / "vocab.json").read_text(encoding="utf-8")))
    assert vocab_size <= DEMO_TEXT_CONFIG["vocab_size"], "the demo tokenizer outgrew the text encoder"

    unet = SD1UNet(DEMO_UNET_CONFIG)
    text_encoder = CLIPTextEncoderL(CLIPTextConfig(**DEMO_TEXT_CONFIG))
    autoencoder = SD1Autoencoder(AutoencoderConfig(**DEMO_VAE_CONFIG))
    for module in (unet, text_encoder, autoencoder):
        perturb(module, generator)
    unet.save_diffusers(root / "unet")
    text_encoder.save_transformers(root / "text_encoder")
    autoencoder.save_diffusers(root / "vae")
    scheduler = root / "scheduler"
    scheduler.mkdir(parents=True, exist_ok=True)
    (scheduler / "scheduler_config.json").write_text(json.dumps(DEMO_SCHEDULER_CONFIG, indent=2) + "\n", "utf-8")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    (root / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return root
