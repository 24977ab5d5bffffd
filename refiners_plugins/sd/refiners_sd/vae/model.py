"""The KL autoencoder of Stable Diffusion as Chains: ``Encoder`` (image -> posterior moments) and ``Decoder``."""

from __future__ import annotations

from pathlib import Path

import torch

from refiners_core import Chain, Conv2d, GroupNorm, SiLU, Slicing
from refiners_core.module import Module
from refiners_sd.vae.config import SD15_SCALING_FACTOR, SDXL_SCALING_FACTOR, AutoencoderConfig
from refiners_sd.vae.layers import NORM_EPS, Downsample, Resnet, SelfAttention2d, Upsample

__all__ = ["AutoencoderKL", "Decoder", "Encoder", "MiddleBlock", "SD1Autoencoder", "SDXLAutoencoder"]

Device = torch.device | str | None


class MiddleBlock(Chain):
    """``Resnet -> SelfAttention2d -> Resnet`` at the lowest resolution (no attention if disabled)."""

    def __init__(
        self,
        channels: int,
        num_groups: int,
        attention: bool = True,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        layers: list[Module] = [Resnet(channels, channels, num_groups, device=device, dtype=dtype)]
        if attention:
            layers.append(SelfAttention2d(channels, num_groups, device=device, dtype=dtype))
        layers.append(Resnet(channels, channels, num_groups, device=device, dtype=dtype))
        super().__init__(*layers)


class OutputBlock(Chain):
    """``GroupNorm -> SiLU -> 3x3 conv``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_groups: int,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            GroupNorm(in_channels, num_groups, eps=NORM_EPS, device=device, dtype=dtype),
            SiLU(),
            Conv2d(in_channels, out_channels, 3, padding=1, device=device, dtype=dtype),
        )


class DownBlock(Chain):
    """``layers_per_block`` resnets, then a :class:`Downsample` (except in the last block)."""


class UpBlock(Chain):
    """``layers_per_block + 1`` resnets, then an :class:`Upsample` (except in the last block)."""


class Encoder(Chain):
    """``image [B, 3, H, W] -> posterior moments [B, 2 * latent_channels, H / f, W / f]`` (mean, then log-variance)."""

    def __init__(self, config: AutoencoderConfig, device: Device = None, dtype: torch.dtype | None = None) -> None:
        channels = config.block_out_channels
        groups = config.norm_num_groups
        blocks: list[Chain] = []
        previous = channels[0]
        for index, width in enumerate(channels):
            layers: list[Module] = []
            for _ in range(config.layers_per_block):
                layers.append(Resnet(previous, width, groups, device=device, dtype=dtype))
                previous = width
            if index < len(channels) - 1:
                layers.append(Downsample(width, device=device, dtype=dtype))
            blocks.append(DownBlock(*layers))
        double_latent = 2 * config.latent_channels
        layers_out: list[Module] = [
            Conv2d(config.in_channels, channels[0], 3, padding=1, device=device, dtype=dtype),
            Chain(*blocks),
            MiddleBlock(channels[-1], groups, config.mid_block_add_attention, device=device, dtype=dtype),
            OutputBlock(channels[-1], double_latent, groups, device=device, dtype=dtype),
        ]
        if config.use_quant_conv:
            layers_out.append(Conv2d(double_latent, double_latent, 1, device=device, dtype=dtype))
        super().__init__(*layers_out)


class Decoder(Chain):
    """``latents [B, latent_channels, h, w] -> image [B, 3, h * f, w * f]`` (latents not scaled)."""

    def __init__(self, config: AutoencoderConfig, device: Device = None, dtype: torch.dtype | None = None) -> None:
        channels = tuple(reversed(config.block_out_channels))
        groups = config.norm_num_groups
        latent = config.latent_channels
        blocks: list[Chain] = []
        previous = channels[0]
        for index, width in enumerate(channels):
            layers: list[Module] = []
            for _ in range(config.layers_per_block + 1):
                layers.append(Resnet(previous, width, groups, device=device, dtype=dtype))
                previous = width
            if index < len(channels) - 1:
                layers.append(Upsample(width, device=device, dtype=dtype))
            blocks.append(UpBlock(*layers))
        layers_out: list[Module] = []
        if config.use_post_quant_conv:
            layers_out.append(Conv2d(latent, latent, 1, device=device, dtype=dtype))
        layers_out += [
            Conv2d(latent, channels[0], 3, padding=1, device=device, dtype=dtype),
            MiddleBlock(channels[0], groups, config.mid_block_add_attention, device=device, dtype=dtype),
            Chain(*blocks),
            OutputBlock(channels[-1], config.out_channels, groups, device=device, dtype=dtype),
        ]
        super().__init__(*layers_out)


class AutoencoderKL(Chain):
    """Stable Diffusion's VAE: ``Encoder -> posterior mean -> Decoder`` (the forward reconstructs an image).

    Images are ``[B, 3, H, W]`` tensors in ``[-1, 1]`` (see :mod:`refiners_sd.vae.image` for PIL).
    :meth:`encode` returns latents scaled for the UNet (``(mean - shift) * scaling_factor``, or a sample
    of the posterior with a ``generator``); :meth:`decode` undoes the scaling and decodes.
    """

    default_config: AutoencoderConfig = AutoencoderConfig()

    def __init__(
        self, config: AutoencoderConfig | None = None, device: Device = None, dtype: torch.dtype | None = None
    ) -> None:
        self.config = config = config or self.default_config
        super().__init__(
            Encoder(config, device=device, dtype=dtype),
            Slicing(dim=1, end=config.latent_channels),
            Decoder(config, device=device, dtype=dtype),
        )

    @property
    def encoder(self) -> Encoder:
        """The encoder (image -> moments)."""
        return self.layer("Encoder", Encoder)

    @property
    def decoder(self) -> Decoder:
        """The decoder (unscaled latents -> image)."""
        return self.layer("Decoder", Decoder)

    @property
    def scaling_factor(self) -> float:
        """Multiplies latents on encode, divides them on decode (0.18215 for SD 1.5, 0.13025 for SDXL)."""
        return self.config.scaling_factor

    @property
    def shift_factor(self) -> float:
        """Subtracted from latents before scaling on encode (0 unless the config sets it)."""
        return self.config.shift_factor or 0.0

    def encode(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Image in ``[-1, 1]`` -> scaled latents: the posterior mean, or a sample of it with ``generator``."""
        moments = self.encoder(image)
        mean, log_variance = moments.chunk(2, dim=1)
        latents = mean
        if generator is not None:
            std = torch.exp(0.5 * log_variance.clamp(-30.0, 20.0))
            noise = torch.randn(mean.shape, generator=generator, device=generator.device, dtype=mean.dtype)
            latents = mean + std * noise.to(mean.device)
        return (latents - self.shift_factor) * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> image in ``[-1, 1]`` (not clamped)."""
        return self.decoder(latents / self.scaling_factor + self.shift_factor)

    @classmethod
    def from_diffusers(
        cls,
        path: str | Path,
        device: Device = None,
        dtype: torch.dtype | None = None,
        variant: str | None = None,
    ) -> AutoencoderKL:
        """Load a diffusers ``AutoencoderKL`` folder (``config.json`` + ``diffusion_pytorch_model[.fp16].safetensors``).

        Weights are matched by name (legacy attention names ``query/key/value/proj_attn`` included); any
        missing or unexpected key raises :class:`~refiners_core.WeightsError` listing them.
        """
        from refiners_sd.vae.loading import load_autoencoder

        return load_autoencoder(cls, path, device=device, dtype=dtype, variant=variant)

    def save_diffusers(self, path: str | Path) -> Path:
        """Write ``config.json`` and ``diffusion_pytorch_model.safetensors`` in diffusers' layout to ``path``."""
        from refiners_sd.vae.saving import save_diffusers

        return save_diffusers(self, path)


class SD1Autoencoder(AutoencoderKL):
    """Stable Diffusion 1.5's VAE (scaling factor 0.18215)."""

    default_config = AutoencoderConfig(scaling_factor=SD15_SCALING_FACTOR)


class SDXLAutoencoder(AutoencoderKL):
    """SDXL's VAE (scaling factor 0.13025); the original weights overflow in float16, prefer fp32 or bf16."""

    default_config = AutoencoderConfig(scaling_factor=SDXL_SCALING_FACTOR)
