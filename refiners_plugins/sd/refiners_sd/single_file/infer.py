"""Model configurations read from tensor shapes, so that fine-tunes and tiny test checkpoints load.

Shapes give channels, depths, vocabulary and context sizes. What they cannot tell follows the
architectures' conventions: 8 attention heads in every SD 1.x UNet block, 64 channels per head in the
SDXL UNet and in both CLIP text encoders (at least one head), 32 GroupNorm groups, ``quick_gelu`` in
CLIP ViT-L and ``gelu`` in OpenCLIP ViT-bigG.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from refiners_core import WeightsError
from refiners_sd.clip.config import CLIPTextConfig
from refiners_sd.single_file.layout import Architecture
from refiners_sd.vae.config import SD15_SCALING_FACTOR, SDXL_SCALING_FACTOR, AutoencoderConfig

__all__ = ["SCALING_FACTORS", "clip_config", "unet_config", "vae_config"]

Shapes = Mapping[str, tuple[int, ...]]

SD15_UNET_HEADS = 8
CHANNELS_PER_HEAD = 64
NORM_GROUPS = 32
SAMPLE_SIZES: dict[Architecture, int] = {"sd15": 64, "sdxl": 128}
SCALING_FACTORS: dict[Architecture, float] = {"sd15": SD15_SCALING_FACTOR, "sdxl": SDXL_SCALING_FACTOR}
"""VAE latent scaling factor per architecture (single files do not carry it)."""


def _heads(width: int) -> int:
    return max(1, width // CHANNELS_PER_HEAD)


def _shape(shapes: Shapes, key: str, source: str) -> tuple[int, ...]:
    shape = shapes.get(key)
    if shape is None:
        raise WeightsError(f"{source}: missing key {key!r}")
    return shape


def _indices(shapes: Shapes, pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(match.group(1)) for key in shapes if (match := regex.match(key))})


def unet_config(
    shapes: Shapes, architecture: Architecture, source: str, pooled_dim: int | None = None
) -> dict[str, Any]:
    """A diffusers UNet ``config.json`` mapping for the LDM-named UNet tensors ``shapes`` (no prefix).

    ``pooled_dim``: SDXL's pooled text width (bigG's projection), which splits ``label_emb``'s input
    into pooled text and the 6 time-id embeddings.
    """
    conv_in = _shape(shapes, "input_blocks.0.0.weight", source)
    blocks: list[list[int]] = [[]]
    for index in _indices(shapes, r"^input_blocks\.(\d+)\.")[1:]:
        if f"input_blocks.{index}.0.op.weight" in shapes:
            blocks.append([])
        else:
            blocks[-1].append(index)
    if any(not block for block in blocks):
        raise WeightsError(f"{source}: UNet down blocks without resnets (input_blocks numbering is broken)")
    channels = [_shape(shapes, f"input_blocks.{block[0]}.0.out_layers.3.weight", source)[0] for block in blocks]
    attention = [f"input_blocks.{block[0]}.1.proj_in.weight" in shapes for block in blocks]
    depth = [
        len(_indices(shapes, rf"^input_blocks\.{block[0]}\.1\.transformer_blocks\.(\d+)\.")) or 1 for block in blocks
    ]
    middle = "middle_block.1"
    cross = _shape(shapes, f"{middle}.transformer_blocks.0.attn2.to_k.weight", source)[1]
    linear = len(_shape(shapes, f"{middle}.proj_in.weight", source)) == 2
    up_attention: list[bool] = []
    position = 0
    for block in reversed(blocks):
        up_attention.append(f"output_blocks.{position}.1.proj_in.weight" in shapes)
        position += len(block) + 1
    config: dict[str, Any] = {
        "_class_name": "UNet2DConditionModel",
        "in_channels": conv_in[1],
        "out_channels": _shape(shapes, "out.2.weight", source)[0],
        "block_out_channels": channels,
        "layers_per_block": len(blocks[0]) if len({len(b) for b in blocks}) == 1 else [len(b) for b in blocks],
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attention],
        "transformer_layers_per_block": depth,
        "cross_attention_dim": cross,
        "use_linear_projection": linear,
        "norm_num_groups": NORM_GROUPS,
        "sample_size": SAMPLE_SIZES[architecture],
    }
    time_dim = _shape(shapes, "time_embed.0.weight", source)[0]
    if time_dim != 4 * channels[0]:
        config["time_embedding_dim"] = time_dim
    if architecture == "sd15":
        config["attention_head_dim"] = SD15_UNET_HEADS
        return config
    config["attention_head_dim"] = [_heads(width) for width in channels]
    label = _shape(shapes, "label_emb.0.0.weight", source)[1]
    if pooled_dim is None or (label - pooled_dim) % 6 or label <= pooled_dim:
        raise WeightsError(f"{source}: label_emb input width {label} does not fit a pooled text width {pooled_dim}")
    config.update(
        addition_embed_type="text_time",
        addition_time_embed_dim=(label - pooled_dim) // 6,
        projection_class_embeddings_input_dim=label,
    )
    return config


def clip_config(shapes: Shapes, source: str, open_clip: bool) -> CLIPTextConfig:
    """The config of a CLIP text tower from its tensors: transformers names (CLIP-L, ``text_model.`` stripped)
    or open_clip names (bigG, ``open_clip=True``, with projection)."""
    if open_clip:
        vocab, width = _shape(shapes, "token_embedding.weight", source)
        positions = _shape(shapes, "positional_embedding", source)[0]
        layers = len(_indices(shapes, r"^transformer\.resblocks\.(\d+)\."))
        hidden = _shape(shapes, "transformer.resblocks.0.mlp.c_fc.weight", source)[0]
        projection = _shape(shapes, "text_projection", source)[1]
        activation = "gelu"
    else:
        vocab, width = _shape(shapes, "embeddings.token_embedding.weight", source)
        positions = _shape(shapes, "embeddings.position_embedding.weight", source)[0]
        layers = len(_indices(shapes, r"^encoder\.layers\.(\d+)\."))
        hidden = _shape(shapes, "encoder.layers.0.mlp.fc1.weight", source)[0]
        projection = None
        activation = "quick_gelu"
    return CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=_heads(width),
        max_position_embeddings=positions,
        hidden_act=activation,
        projection_dim=projection,
    )


def vae_config(shapes: Shapes, architecture: Architecture, source: str) -> AutoencoderConfig:
    """An autoencoder config from diffusers-named VAE tensors (translate LDM names first)."""
    downs = _indices(shapes, r"^encoder\.down_blocks\.(\d+)\.")
    if not downs:
        raise WeightsError(f"{source}: no VAE encoder blocks (encoder.down.* / encoder.down_blocks.*)")
    channels = tuple(_shape(shapes, f"encoder.down_blocks.{i}.resnets.0.conv1.weight", source)[0] for i in downs)
    return AutoencoderConfig(
        in_channels=_shape(shapes, "encoder.conv_in.weight", source)[1],
        out_channels=_shape(shapes, "decoder.conv_out.weight", source)[0],
        block_out_channels=channels,
        layers_per_block=len(_indices(shapes, r"^encoder\.down_blocks\.0\.resnets\.(\d+)\.")),
        latent_channels=_shape(shapes, "decoder.conv_in.weight", source)[1],
        norm_num_groups=NORM_GROUPS,
        scaling_factor=SCALING_FACTORS[architecture],
        mid_block_add_attention="encoder.mid_block.attentions.0.to_q.weight" in shapes,
        use_quant_conv="quant_conv.weight" in shapes,
        use_post_quant_conv="post_quant_conv.weight" in shapes,
    )
