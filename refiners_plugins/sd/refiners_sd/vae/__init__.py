"""Stable Diffusion's KL autoencoder (VAE) built from Chains, loading diffusers weights by name."""

from refiners_sd.vae.config import SD15_SCALING_FACTOR, SDXL_SCALING_FACTOR, AutoencoderConfig
from refiners_sd.vae.image import image_to_tensor, tensor_to_image, tensor_to_images
from refiners_sd.vae.layers import Downsample, Pad, Resnet, SelfAttention2d, Upsample
from refiners_sd.vae.model import AutoencoderKL, Decoder, Encoder, MiddleBlock, SD1Autoencoder, SDXLAutoencoder

__all__ = [
    "SD15_SCALING_FACTOR",
    "SDXL_SCALING_FACTOR",
    "AutoencoderConfig",
    "AutoencoderKL",
    "Decoder",
    "Downsample",
    "Encoder",
    "MiddleBlock",
    "Pad",
    "Resnet",
    "SD1Autoencoder",
    "SDXLAutoencoder",
    "SelfAttention2d",
    "Upsample",
    "image_to_tensor",
    "tensor_to_image",
    "tensor_to_images",
]
