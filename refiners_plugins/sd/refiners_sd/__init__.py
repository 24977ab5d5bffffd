"""refiners-sd: Stable Diffusion 1.5 and SDXL UNets built from refiners Chains.

Names that need torch are imported on first attribute access, so importing ``refiners_sd`` (and its
plugin entry point, :mod:`refiners_sd.plugin`) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from refiners_core.lazy import lazy_exports

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "UNet": "refiners_sd.unet.model",
    "SD1UNet": "refiners_sd.unet.sd1",
    "SDXLUNet": "refiners_sd.unet.sdxl",
    "UNetConfig": "refiners_sd.unet.config",
    "UnsupportedConfigError": "refiners_sd.unet.config",
    "load_unet": "refiners_sd.unet.loading",
    "diffusers_state_dict": "refiners_sd.unet.loading",
    "load_diffusers_state_dict": "refiners_sd.unet.loading",
    "diffusers_module_map": "refiners_sd.unet.mapping",
    "attention_processor_names": "refiners_sd.unet.mapping",
    "ldm_module_map": "refiners_sd.unet.mapping",
    "ldm_to_diffusers_name": "refiners_sd.unet.mapping",
    "diffusers_to_ldm_name": "refiners_sd.unet.mapping",
    "SD15_UNET_CONFIG": "refiners_sd.configs",
    "SDXL_UNET_CONFIG": "refiners_sd.configs",
    "KNOWN_CONFIGS": "refiners_sd.configs",
    "CLIPTextEncoder": "refiners_sd.clip",
    "CLIPTextEncoderL": "refiners_sd.clip",
    "CLIPTextEncoderG": "refiners_sd.clip",
    "DoubleTextEncoder": "refiners_sd.clip",
    "CLIPTokenizer": "refiners_sd.clip",
    "CLIPTextConfig": "refiners_sd.clip",
    "CLIPTextOutput": "refiners_sd.clip",
    "CLIPTransformer": "refiners_sd.clip",
    "TransformerLayer": "refiners_sd.clip",
    "AutoencoderKL": "refiners_sd.vae",
    "SD1Autoencoder": "refiners_sd.vae",
    "SDXLAutoencoder": "refiners_sd.vae",
    "AutoencoderConfig": "refiners_sd.vae",
    "image_to_tensor": "refiners_sd.vae",
    "tensor_to_image": "refiners_sd.vae",
    "tensor_to_images": "refiners_sd.vae",
    "Solver": "refiners_sd.solvers",
    "DDIM": "refiners_sd.solvers",
    "Euler": "refiners_sd.solvers",
    "DPMSolverPlusPlus2M": "refiners_sd.solvers",
    "StableDiffusion1": "refiners_sd.pipeline",
    "StableDiffusionXL": "refiners_sd.pipeline",
    "load_pipeline": "refiners_sd.pipeline",
    "load_single_file": "refiners_sd.single_file",
    "load_vae": "refiners_sd.single_file",
    "detect_architecture": "refiners_sd.single_file",
    "save_single_file": "refiners_sd.single_file",
    "SCHEDULER_CONFIGS": "refiners_sd.pipeline.defaults",
}

__all__ = ["__version__", *_LAZY]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)


if TYPE_CHECKING:
    from refiners_sd.clip import (
        CLIPTextConfig,
        CLIPTextEncoder,
        CLIPTextEncoderG,
        CLIPTextEncoderL,
        CLIPTextOutput,
        CLIPTokenizer,
        CLIPTransformer,
        DoubleTextEncoder,
        TransformerLayer,
    )
    from refiners_sd.configs import KNOWN_CONFIGS, SD15_UNET_CONFIG, SDXL_UNET_CONFIG
    from refiners_sd.pipeline import StableDiffusion1, StableDiffusionXL, load_pipeline
    from refiners_sd.pipeline.defaults import SCHEDULER_CONFIGS
    from refiners_sd.single_file import detect_architecture, load_single_file, load_vae, save_single_file
    from refiners_sd.solvers import DDIM, DPMSolverPlusPlus2M, Euler, Solver
    from refiners_sd.unet.config import UNetConfig, UnsupportedConfigError
    from refiners_sd.unet.loading import diffusers_state_dict, load_diffusers_state_dict, load_unet
    from refiners_sd.unet.mapping import (
        attention_processor_names,
        diffusers_module_map,
        diffusers_to_ldm_name,
        ldm_module_map,
        ldm_to_diffusers_name,
    )
    from refiners_sd.unet.model import UNet
    from refiners_sd.unet.sd1 import SD1UNet
    from refiners_sd.unet.sdxl import SDXLUNet
    from refiners_sd.vae import (
        AutoencoderConfig,
        AutoencoderKL,
        SD1Autoencoder,
        SDXLAutoencoder,
        image_to_tensor,
        tensor_to_image,
        tensor_to_images,
    )
