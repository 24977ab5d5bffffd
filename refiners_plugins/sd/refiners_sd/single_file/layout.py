"""The single-file checkpoint layout of SD 1.x and SDXL (A1111, ComfyUI, Forge, the original repositories).

One file holds every component under a prefix:

| component | SD 1.x | SDXL |
|---|---|---|
| UNet (LDM names) | ``model.diffusion_model.`` | ``model.diffusion_model.`` |
| VAE (LDM names) | ``first_stage_model.`` | ``first_stage_model.`` |
| CLIP ViT-L (transformers names) | ``cond_stage_model.transformer.`` | ``conditioner.embedders.0.transformer.`` |
| OpenCLIP ViT-bigG (open_clip names) | | ``conditioner.embedders.1.model.`` |

CLIP-L keys come with or without ``text_model.`` depending on the tool that wrote them. Besides weights,
files hold tensors that are not part of the models: the noise-schedule buffers of the training code
(``betas``, ``alphas_cumprod``...), ``position_ids``, bigG's ``logit_scale`` and, in files saved
during training, the EMA copy of the UNet (``model_ema.*``). These are accepted and not used: the UNet
weights are always the ones under ``model.diffusion_model.`` (in "EMA-only" files, those are the EMA
weights). Any other key is rejected.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from refiners_core import WeightsError
from refiners_core.weights import format_keys

__all__ = [
    "COMPONENT_PREFIXES",
    "Architecture",
    "SplitKeys",
    "architecture_from_keys",
    "split_keys",
]

Architecture = Literal["sd15", "sdxl"]

UNET = "model.diffusion_model."
VAE = "first_stage_model."
SD15_TEXT = "cond_stage_model.transformer."
SDXL_TEXT_L = "conditioner.embedders.0.transformer."
SDXL_TEXT_G = "conditioner.embedders.1.model."

COMPONENT_PREFIXES: dict[Architecture, dict[str, str]] = {
    "sd15": {"unet": UNET, "vae": VAE, "text_encoder": SD15_TEXT},
    "sdxl": {"unet": UNET, "vae": VAE, "text_encoder": SDXL_TEXT_L, "text_encoder_2": SDXL_TEXT_G},
}
"""Per architecture: component name -> key prefix in the file."""

NOISE_SCHEDULE_KEYS = frozenset(
    {
        "betas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
        "logvar",
        "lvlb_weights",
    }
)
"""Top-level buffers of the original training code (the schedule ships with refiners-sd instead)."""

EMA_PREFIX = "model_ema."
# non-weight tensors inside a component (after its prefix)
_COMPONENT_EXTRAS = ("text_model.embeddings.position_ids", "embeddings.position_ids", "logit_scale")

# prefixes of architectures we recognise but do not run, for a precise error
_OTHER_ARCHITECTURES = {
    "cond_stage_model.model.": "Stable Diffusion 2.x (OpenCLIP ViT-H text encoder)",
    "conditioner.embedders.0.model.": "the SDXL refiner (OpenCLIP ViT-bigG as first embedder)",
    "text_encoders.": "Stable Diffusion 3",
    "double_blocks.": "Flux",
}


def architecture_from_keys(keys: Iterable[str]) -> Architecture | None:
    """``sdxl`` when the file holds both SDXL text-encoder prefixes and a UNet, ``sd15`` for SD 1.x's text
    encoder prefix and a UNet, else ``None``. Decided by key names alone (sizes do not matter)."""
    has_unet = has_sd15_text = has_text_l = has_text_g = False
    for key in keys:
        has_unet = has_unet or key.startswith(UNET)
        has_sd15_text = has_sd15_text or key.startswith(SD15_TEXT)
        has_text_l = has_text_l or key.startswith(SDXL_TEXT_L)
        has_text_g = has_text_g or key.startswith(SDXL_TEXT_G)
    if has_unet and has_text_l and has_text_g:
        return "sdxl"
    if has_unet and has_sd15_text:
        return "sd15"
    return None


def describe_foreign(keys: Iterable[str]) -> str | None:
    """The name of a known architecture this file belongs to (SD 2.x, SD 3, Flux...), if its keys say so."""
    for key in keys:
        for prefix, name in _OTHER_ARCHITECTURES.items():
            if key.startswith(prefix):
                return name
    return None


@dataclass(frozen=True)
class SplitKeys:
    """The keys of a checkpoint sorted by component: ``components[name] = {key without prefix: full key}``."""

    architecture: Architecture
    components: dict[str, dict[str, str]]
    ignored: list[str]


def split_keys(source: str, keys: Iterable[str], architecture: Architecture) -> SplitKeys:
    """Sort ``keys`` into the components of ``architecture``; accept known non-weight keys.

    Raises:
        WeightsError: naming ``source`` and the unknown keys, or the components without any key.
    """
    prefixes = COMPONENT_PREFIXES[architecture]
    components: dict[str, dict[str, str]] = {name: {} for name in prefixes}
    ignored: list[str] = []
    unknown: list[str] = []
    for key in keys:
        for name, prefix in prefixes.items():
            if key.startswith(prefix):
                short = key[len(prefix) :]
                if short in _COMPONENT_EXTRAS:
                    ignored.append(key)
                else:
                    components[name][short] = key
                break
        else:
            if key in NOISE_SCHEDULE_KEYS or key.startswith(EMA_PREFIX):
                ignored.append(key)
            else:
                unknown.append(key)
    if unknown:
        raise WeightsError(f"{source}: unknown keys for an {architecture} checkpoint: {format_keys(sorted(unknown))}")
    empty = [f"{name} ({prefixes[name]}*)" for name, found in components.items() if not found]
    if empty:
        raise WeightsError(f"{source}: this {architecture} checkpoint lacks component(s) {', '.join(empty)}")
    return SplitKeys(architecture, components, ignored)
