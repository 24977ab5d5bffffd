"""Parity of refiners-sd's VAE with diffusers' ``AutoencoderKL`` on tiny random models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy
import pytest
import torch
from diffusers import AutoencoderKL as DiffusersAutoencoderKL
from PIL import Image
from refiners_sd.vae import (
    SD15_SCALING_FACTOR,
    SDXL_SCALING_FACTOR,
    AutoencoderKL,
    SD1Autoencoder,
    SDXLAutoencoder,
    image_to_tensor,
    tensor_to_image,
)
from safetensors.torch import load_file, save_file

from refiners_core import WeightsError

TOLERANCE = 1e-4
TINY_VAE: dict[str, Any] = {
    "block_out_channels": (32, 64),
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
    "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
}


def make_vae(folder: Path, seed: int = 0, **overrides: Any) -> DiffusersAutoencoderKL:
    """A tiny diffusers VAE with noise on every parameter (default norm/bias inits would hide swaps), saved."""
    torch.manual_seed(seed)
    model = DiffusersAutoencoderKL(**{**TINY_VAE, **overrides})
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    model.eval().save_pretrained(folder)
    return model


def images(batch: int = 2, height: int = 32, width: int = 24) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.mark.parametrize(
    ("cls", "overrides"),
    [
        (SD1Autoencoder, {"norm_num_groups": 8}),
        (SDXLAutoencoder, {"norm_num_groups": 32, "scaling_factor": SDXL_SCALING_FACTOR}),
    ],
)
def test_encode_decode_parity(tmp_path: Path, cls: type[AutoencoderKL], overrides: dict[str, Any]) -> None:
    reference = make_vae(tmp_path / "vae", **overrides)
    vae = cls.from_diffusers(tmp_path / "vae")
    scaling = reference.config.scaling_factor
    assert vae.scaling_factor == scaling
    x = images()

    with torch.no_grad():
        expected_latents = reference.encode(x).latent_dist.mean * scaling
        latents = vae.encode(x)
        expected_image = reference.decode(latents / scaling).sample
        image = vae.decode(latents)

    assert latents.shape == (2, 4, 16, 12)
    assert (latents - expected_latents).abs().max() < TOLERANCE
    assert (image - expected_image).abs().max() < TOLERANCE
    with torch.no_grad():
        assert (vae(x) - expected_image).abs().max() < TOLERANCE  # the Chain's forward reconstructs


def test_sampled_latents_match(tmp_path: Path) -> None:
    reference = make_vae(tmp_path / "vae", seed=2)
    vae = AutoencoderKL.from_diffusers(tmp_path / "vae")
    x = images(batch=1)
    with torch.no_grad():
        expected = reference.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(5))
        sampled = vae.encode(x, generator=torch.Generator().manual_seed(5))
    assert (sampled - expected * SD15_SCALING_FACTOR).abs().max() < TOLERANCE


def test_three_blocks_without_attention_and_shift(tmp_path: Path) -> None:
    overrides = {
        "block_out_channels": (16, 32, 32),
        "down_block_types": ("DownEncoderBlock2D",) * 3,
        "up_block_types": ("UpDecoderBlock2D",) * 3,
        "layers_per_block": 2,
        "mid_block_add_attention": False,
        "shift_factor": 0.1,
    }
    reference = make_vae(tmp_path / "vae", seed=3, **overrides)
    vae = AutoencoderKL.from_diffusers(tmp_path / "vae")
    x = images(batch=1, height=16, width=16)
    with torch.no_grad():
        expected = (reference.encode(x).latent_dist.mean - 0.1) * SD15_SCALING_FACTOR
        latents = vae.encode(x)
        expected_image = reference.decode(latents / SD15_SCALING_FACTOR + 0.1).sample
        image = vae.decode(latents)
    assert (latents - expected).abs().max() < TOLERANCE
    assert (image - expected_image).abs().max() < TOLERANCE


def test_legacy_attention_names_and_fp16_variant(tmp_path: Path) -> None:
    reference = make_vae(tmp_path / "vae", seed=4)
    weights = tmp_path / "vae" / "diffusion_pytorch_model.safetensors"
    renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for key, value in load_file(weights).items():
        for new, old in renames.items():
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
        legacy[key] = value.half()
    weights.unlink()
    save_file(legacy, tmp_path / "vae" / "diffusion_pytorch_model.fp16.safetensors")

    vae = AutoencoderKL.from_diffusers(tmp_path / "vae", dtype=torch.float32)
    assert all(parameter.dtype == torch.float32 for parameter in vae.parameters())
    x = images(batch=1)
    with torch.no_grad():
        expected = reference.half().float().encode(x).latent_dist.mean * SD15_SCALING_FACTOR
        assert (vae.encode(x) - expected).abs().max() < TOLERANCE


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path) -> None:
    make_vae(tmp_path / "vae", seed=5)
    weights = tmp_path / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    del state["decoder.up_blocks.1.resnets.0.conv_shortcut.weight"]
    state["decoder.mystery.weight"] = torch.zeros(1)
    save_file(state, weights)
    with pytest.raises(WeightsError) as error:
        AutoencoderKL.from_diffusers(tmp_path / "vae")
    assert "missing keys: decoder.up_blocks.1.resnets.0.conv_shortcut.weight" in str(error.value)
    assert "unexpected keys: decoder.mystery.weight" in str(error.value)


def test_pil_round_trip() -> None:
    pixels = torch.randint(0, 256, (8, 6, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    image = Image.fromarray(pixels.numpy())
    tensor = image_to_tensor(image)
    assert tensor.shape == (1, 3, 8, 6) and tensor.min() >= -1 and tensor.max() <= 1
    assert torch.equal(torch.from_numpy(numpy.array(tensor_to_image(tensor))), pixels)


def test_config_errors_name_the_file_and_field(tmp_path: Path) -> None:
    from refiners_sd.vae.config import AutoencoderConfig

    from refiners_core import ConfigError

    with pytest.raises(ConfigError, match=r"VAE config: field 'latent_channels' should be int, got '4'"):
        AutoencoderConfig.from_dict({"latent_channels": "4"})
    (tmp_path / "config.json").write_text('{"act_fn": "gelu"}')
    with pytest.raises(ConfigError, match="config.json: unsupported VAE act_fn 'gelu'"):
        AutoencoderConfig.from_file(tmp_path / "config.json")
    with pytest.raises(ConfigError, match="VAE config not found"):
        AutoencoderKL.from_diffusers(tmp_path / "absent")
