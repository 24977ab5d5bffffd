"""Tiny, randomly initialised Stable Diffusion 1.5-topology assets, built with this package's own models.

They exercise the whole text-to-image flow (tokenizer, text encoder, UNet, VAE, solver, adapters) on a CPU
in seconds, with no download: :func:`build_demo_assets` writes a diffusers pipeline folder and, for each
adapter plugin that is installed, an adapter for it (a LoRA, a ControlNet, a T2I-Adapter, an IP-Adapter with
its CLIP image encoder), plus a condition image and a reference image. The images they make are noise-like,
not art.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "DEMO_SCHEDULER_CONFIG",
    "DEMO_TEXT_CONFIG",
    "DEMO_IMAGE_ENCODER_CONFIG",
    "DEMO_UNET_CONFIG",
    "DEMO_VAE_CONFIG",
    "DemoAssets",
    "build_demo_assets",
    "build_tiny_base",
    "write_condition_image",
    "write_reference_image",
    "write_tiny_controlnet",
    "write_tiny_image_encoder",
    "write_tiny_ip_adapter",
    "write_tiny_lora",
    "write_tiny_t2i_adapter",
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

DEMO_IMAGE_ENCODER_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 8,
    "projection_dim": 16,
}
"""A CLIP vision tower with projection (the IP-Adapter image encoder), ViT-H/14's layout in miniature."""

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


def _perturb(module: torch.nn.Module, generator: torch.Generator, amount: float = 0.05) -> None:
    """Add noise to every weight so that no layer stays at a trivial init (zeros, ones)."""
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
        _perturb(module, generator)
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


def write_tiny_lora(base: str | Path, path: str | Path, rank: int = 4, seed: int = 1, format: str = "kohya") -> Path:
    """Write a LoRA for the UNet of the pipeline folder ``base`` on every attention projection (needs refiners-lora).

    The file is in ``format`` (``kohya`` or ``diffusers``), exactly as trainers write them.
    """
    from refiners_lora.writers import write_lora

    from refiners_sd.unet.loading import load_unet
    from refiners_sd.unet.mapping import diffusers_module_map

    unet = load_unet(Path(base) / "unet")
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor, float]] = {}
    for name, layer in diffusers_module_map(unet).items():
        if not name.endswith((".to_q", ".to_k", ".to_v", ".to_out.0")):
            continue
        weight = layer.weight
        assert isinstance(weight, torch.Tensor)  # the attention projections are Linear layers
        down = torch.randn(rank, weight.shape[1], generator=generator) * 0.3
        up = torch.randn(weight.shape[0], rank, generator=generator) * 0.3
        tensors[("unet", name)] = (down, up, float(rank))
    return write_lora(tensors, path, format=format)


def write_tiny_controlnet(base: str | Path, folder: str | Path, seed: int = 2) -> Path:
    """Write a diffusers ControlNet folder for the UNet of the pipeline folder ``base`` (needs refiners-controlnet).

    Its zero convolutions are perturbed like every other weight, so that the condition visibly matters.
    """
    from refiners_controlnet.model import ControlNet

    from refiners_sd.unet.loading import load_unet

    unet = load_unet(Path(base) / "unet")
    config = {**unet.config.to_dict(), "conditioning_embedding_out_channels": [8, 8, 16, 16]}
    torch.manual_seed(seed)
    controlnet = ControlNet(unet, config, name="demo")
    _perturb(controlnet.encoder, torch.Generator().manual_seed(seed))
    return controlnet.save_diffusers(folder)


def write_tiny_t2i_adapter(base: str | Path, folder: str | Path, seed: int = 3) -> Path:
    """Write a diffusers T2I-Adapter folder for the UNet of the pipeline folder ``base`` (needs refiners-t2i).

    A ``full_adapter`` with one feature per down block of the UNet and a one-channel (grayscale) condition,
    like the sketch and canny adapters of SD1.5.
    """
    from refiners_t2i import T2IAdapter, T2IConfig

    from refiners_sd.unet.loading import load_unet

    unet = load_unet(Path(base) / "unet")
    config = T2IConfig(in_channels=1, channels=tuple(unet.config.block_out_channels), num_res_blocks=1)
    torch.manual_seed(seed)
    adapter = T2IAdapter(unet, config, name="demo")
    _perturb(adapter.encoder, torch.Generator().manual_seed(seed))
    return adapter.save_diffusers(folder)


def write_tiny_image_encoder(folder: str | Path, seed: int = 4) -> Path:
    """Write a tiny CLIP vision tower with projection in transformers' layout (needs refiners-ip-adapter)."""
    from refiners_ip_adapter import CLIPImageConfig, CLIPImageEncoder

    torch.manual_seed(seed)
    encoder = CLIPImageEncoder(CLIPImageConfig(**DEMO_IMAGE_ENCODER_CONFIG))
    _perturb(encoder, torch.Generator().manual_seed(seed))
    return encoder.save_transformers(folder)


def write_tiny_ip_adapter(base: str | Path, path: str | Path, seed: int = 5) -> Path:
    """Write an h94 IP-Adapter (base variant, safetensors) for the UNet of ``base`` and the demo image encoder
    (needs refiners-ip-adapter)."""
    from refiners_ip_adapter import ImageProjection, IPAdapter

    from refiners_core.weights import save_state_dict
    from refiners_sd.unet.loading import load_unet

    unet = load_unet(Path(base) / "unet")
    torch.manual_seed(seed)
    projection = ImageProjection(DEMO_IMAGE_ENCODER_CONFIG["projection_dim"], DEMO_UNET_CONFIG["cross_attention_dim"])
    adapter = IPAdapter(unet, projection, name="demo")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return save_state_dict(adapter.h94_state_dict(), path, metadata={"format": "pt"})


def write_condition_image(path: str | Path, size: tuple[int, int] = (64, 64)) -> Path:
    """Write a condition image (white square outline on black, an edge map as a ControlNet expects)."""
    from PIL import Image, ImageDraw

    width, height = size
    image = Image.new("RGB", size, "black")
    ImageDraw.Draw(image).rectangle(
        (width // 4, height // 4, 3 * width // 4, 3 * height // 4), outline="white", width=max(1, width // 32)
    )
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target)
    return target


def write_reference_image(path: str | Path, size: tuple[int, int] = (48, 40)) -> Path:
    """Write a reference image for IP-Adapter (a red disc on a blue-green gradient; not square, so that the
    image encoder's resize and center crop are exercised)."""
    from PIL import Image, ImageDraw

    width, height = size
    image = Image.new("RGB", size)
    image.putdata([(0, 255 * x // width, 255 * y // height) for y in range(height) for x in range(width)])
    ImageDraw.Draw(image).ellipse((width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=(220, 30, 30))
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target)
    return target


@dataclass(frozen=True)
class DemoAssets:
    """Paths of the demo assets (an adapter is ``None`` when its plugin is not installed)."""

    base: Path
    lora: Path | None
    controlnet: Path | None
    condition_image: Path
    t2i: Path | None = None
    ip_adapter: Path | None = None
    image_encoder: Path | None = None
    reference_image: Path | None = None


def _optional(write: Callable[[], Path]) -> Path | None:
    """``write()``, or ``None`` when the plugin it needs is not installed."""
    try:
        return write()
    except ImportError:
        return None


def build_demo_assets(folder: str | Path, seed: int = 0) -> DemoAssets:
    """Write the tiny base model (``base/``), a kohya LoRA (``lora.safetensors``), a ControlNet (``controlnet/``),
    a T2I-Adapter (``t2i/``), an IP-Adapter (``ip_adapter.safetensors``) with its CLIP image encoder
    (``image_encoder/``), ``condition.png`` and ``reference.png``; an adapter whose plugin is not installed is
    left out."""
    root = Path(folder)
    base = build_tiny_base(root / "base", seed=seed)
    lora = _optional(lambda: write_tiny_lora(base, root / "lora.safetensors", seed=seed + 1))
    controlnet = _optional(lambda: write_tiny_controlnet(base, root / "controlnet", seed=seed + 2))
    t2i = _optional(lambda: write_tiny_t2i_adapter(base, root / "t2i", seed=seed + 3))
    image_encoder = _optional(lambda: write_tiny_image_encoder(root / "image_encoder", seed=seed + 4))
    ip_adapter = None
    if image_encoder is not None:
        ip_adapter = _optional(lambda: write_tiny_ip_adapter(base, root / "ip_adapter.safetensors", seed=seed + 5))
    condition = write_condition_image(root / "condition.png")
    reference = write_reference_image(root / "reference.png") if ip_adapter is not None else None
    return DemoAssets(
        base=base,
        lora=lora,
        controlnet=controlnet,
        condition_image=condition,
        t2i=t2i,
        ip_adapter=ip_adapter,
        image_encoder=image_encoder,
        reference_image=reference,
    )
