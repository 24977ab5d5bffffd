"""Tiny diffusers UNets for parity tests of refiners-sd and of the adapter families built on it.

Usage (any test module)::

    from sd_fixtures import TINY_SD15, TINY_SDXL, make_tiny_unet, run_diffusers, run_refiners

    case = make_tiny_unet(tmp_path, TINY_SD15, batch=2, height=16, width=24)
    model, path, inputs = case                  # diffusers model (eval, float32), saved folder, inputs
    unet = refiners_sd.load_unet(path)          # or SD1UNet.from_diffusers(path)
    expected = run_diffusers(model, inputs)     # extra keyword arguments go to model(...)
    actual = run_refiners(unet, inputs)         # sets the contexts, then unet(sample)

``inputs`` is a dict: ``sample``, ``timestep`` (one per batch item), ``encoder_hidden_states``, and
for SDXL topologies ``text_embeds`` and ``time_ids``. Every parameter of the diffusers model is
perturbed with noise so that swapped norms or projections cannot hide behind default inits.
The configs (``TINY_SD15``, ``TINY_SD15_3BLOCKS``, ``TINY_SDXL``, ``TINY_SDXL_3BLOCKS``) are plain dicts:
copy and override fields with ``{**TINY_SD15, "layers_per_block": 1}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch

TINY_SD15: dict[str, Any] = {
    "block_out_channels": (32, 64),
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "layers_per_block": 2,
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "norm_num_groups": 8,
    "sample_size": 16,
}

TINY_SD15_3BLOCKS: dict[str, Any] = {
    "block_out_channels": (32, 32, 64),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "layers_per_block": 1,
    "cross_attention_dim": 24,
    "attention_head_dim": (2, 4, 8),
    "norm_num_groups": 16,
    "sample_size": 16,
}

TINY_SDXL: dict[str, Any] = {
    "block_out_channels": (32, 64),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2),
    "attention_head_dim": (2, 4),
    "cross_attention_dim": 32,
    "norm_num_groups": 8,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 32 + 6 * 8,  # pooled text (32) + 6 time ids x 8
    "sample_size": 16,
}

TINY_SDXL_3BLOCKS: dict[str, Any] = {
    **TINY_SDXL,
    "block_out_channels": (32, 32, 64),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "layers_per_block": 1,
    "transformer_layers_per_block": (1, 2, 2),
    "attention_head_dim": (2, 2, 4),
    "norm_num_groups": 16,
}

POOLED_DIM = 32  # pooled text embedding width of the tiny SDXL configs


class TinyUNet(NamedTuple):
    """A tiny diffusers UNet, the folder it was saved to, and matching inputs."""

    model: Any  # diffusers.UNet2DConditionModel, eval mode, float32
    path: Path
    inputs: dict[str, torch.Tensor]


def is_sdxl(config: dict[str, Any]) -> bool:
    """Whether ``config`` uses SDXL's ``text_time`` conditioning."""
    return config.get("addition_embed_type") == "text_time"


def make_inputs(
    config: dict[str, Any], batch: int = 2, height: int = 16, width: int = 16, tokens: int = 7, seed: int = 1
) -> dict[str, torch.Tensor]:
    """Random inputs for a UNet of ``config``: latents ``[batch, in_channels, height, width]`` and conditioning."""
    generator = torch.Generator().manual_seed(seed)
    cross_dim = config["cross_attention_dim"]
    cross_dim = cross_dim if isinstance(cross_dim, int) else cross_dim[0]
    inputs = {
        "sample": torch.randn(batch, config.get("in_channels", 4), height, width, generator=generator),
        "timestep": torch.randint(0, 1000, (batch,), generator=generator),
        "encoder_hidden_states": torch.randn(batch, tokens, cross_dim, generator=generator),
    }
    if is_sdxl(config):
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        inputs["text_embeds"] = torch.randn(batch, pooled, generator=generator)
        inputs["time_ids"] = torch.tensor([[height * 8, width * 8, 0, 0, height * 8, width * 8]] * batch).float()
    return inputs


def make_tiny_unet(
    directory: Path,
    config: dict[str, Any],
    batch: int = 2,
    height: int = 16,
    width: int = 16,
    seed: int = 0,
    variant: str | None = None,
) -> TinyUNet:
    """Build a randomly initialised diffusers ``UNet2DConditionModel`` from ``config``, perturb its weights,
    save it with ``save_pretrained`` (``variant="fp16"`` writes the fp16 variant file) under ``directory``."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    model = UNet2DConditionModel(**config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    path = Path(directory) / "unet"
    if variant == "fp16":
        model.to(torch.float16).save_pretrained(path, variant="fp16")
        model.to(torch.float32)
        # the fp16 file is what gets loaded: compare against the rounded weights
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(parameter.half().float())
    else:
        model.save_pretrained(path, variant=variant)
    return TinyUNet(model, path, make_inputs(config, batch, height, width, seed=seed + 1))


@torch.no_grad()
def run_diffusers(model: Any, inputs: dict[str, torch.Tensor], **kwargs: Any) -> torch.Tensor:
    """Run the diffusers model on ``inputs`` (extra ``kwargs``, e.g. ``down_block_additional_residuals``)."""
    added = {key: inputs[key] for key in ("text_embeds", "time_ids") if key in inputs}
    return model(
        inputs["sample"],
        inputs["timestep"],
        encoder_hidden_states=inputs["encoder_hidden_states"],
        added_cond_kwargs=added or None,
        **kwargs,
    ).sample


@torch.no_grad()
def run_refiners(unet: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Set the UNet's contexts from ``inputs`` and run it on ``inputs["sample"]``."""
    unet.set_timestep(inputs["timestep"])
    unet.set_clip_text_embedding(inputs["encoder_hidden_states"])
    if "text_embeds" in inputs:
        unet.set_pooled_text_embedding(inputs["text_embeds"])
        unet.set_time_ids(inputs["time_ids"])
    return unet(inputs["sample"])
