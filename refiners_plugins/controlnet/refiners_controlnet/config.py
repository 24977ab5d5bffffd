"""ControlNet configuration: a diffusers ``ControlNetModel`` ``config.json``, or one inferred from tensor shapes.

A ControlNet's encoder is a copy of a UNet's encoder, so most fields are those of a UNet config
(validated by :class:`refiners_sd.UNetConfig`); the rest describe the conditioning image encoder.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from refiners_sd import UNetConfig, UnsupportedConfigError

from refiners_core import AdapterError, WeightsError
from refiners_core.config import read_config

__all__ = ["ControlNetConfig", "check_compatible", "infer_config", "read_config", "residual_layout"]

# fields of a ControlNetModel config that a UNet config does not have
CONTROL_FIELDS = (
    "conditioning_channels",
    "conditioning_embedding_out_channels",
    "controlnet_conditioning_channel_order",
    "global_pool_conditions",
)
_UP_OF_DOWN = {"CrossAttnDownBlock2D": "CrossAttnUpBlock2D", "DownBlock2D": "UpBlock2D"}


@dataclass(frozen=True)
class ControlNetConfig:
    """A validated ControlNet configuration.

    Attributes:
        unet: the architecture of the encoder copy (time embedding, down blocks, middle block).
        conditioning_channels: channels of the condition image (3 for RGB).
        conditioning_embedding_out_channels: widths of the condition encoder's convolutions; each
            step after the first halves the resolution (``(16, 32, 96, 256)``: 8x the latent size).
        channel_order: ``"rgb"``, or ``"bgr"`` to flip the condition's channels first.
        global_pool_conditions: average every residual over space (the "shuffle" ControlNet).
        raw: the original mapping (a diffusers ``config.json``).
    """

    unet: UNetConfig
    conditioning_channels: int = 3
    conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256)
    channel_order: str = "rgb"
    global_pool_conditions: bool = False
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> ControlNetConfig:
        """Validate a diffusers ``ControlNetModel`` config mapping.

        Raises:
            UnsupportedConfigError: naming the field whose value is not implemented.
        """
        unet_fields = {key: value for key, value in config.items() if key not in CONTROL_FIELDS}
        down = unet_fields.get("down_block_types", ())
        if "up_block_types" not in unet_fields and all(kind in _UP_OF_DOWN for kind in down):
            unet_fields["up_block_types"] = [_UP_OF_DOWN[kind] for kind in reversed(down)]
        unet = UNetConfig.from_dict(unet_fields)
        channels = config.get("conditioning_embedding_out_channels") or (16, 32, 96, 256)
        if not all(isinstance(value, int) and value > 0 for value in channels):
            raise UnsupportedConfigError(f"unsupported conditioning_embedding_out_channels={channels!r}")
        order = config.get("controlnet_conditioning_channel_order", "rgb")
        if order not in ("rgb", "bgr"):
            raise UnsupportedConfigError(f"unsupported controlnet_conditioning_channel_order={order!r} (rgb, bgr)")
        return cls(
            unet=unet,
            conditioning_channels=int(config.get("conditioning_channels", 3)),
            conditioning_embedding_out_channels=tuple(channels),
            channel_order=order,
            global_pool_conditions=bool(config.get("global_pool_conditions", False)),
            raw=dict(config),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> ControlNetConfig:
        """Read and validate a ``config.json`` (or the ``config.json`` inside a folder)."""
        return cls.from_dict(read_config(path, "ControlNet config"))

    @property
    def downscale(self) -> int:
        """How many times larger the condition image is than the latents (8 by default)."""
        return 2 ** (len(self.conditioning_embedding_out_channels) - 1)

    @property
    def num_residuals(self) -> int:
        """Residuals the ControlNet adds: one per UNet skip connection, plus the middle block."""
        return len(residual_layout(self.unet))

    def to_dict(self) -> dict[str, Any]:
        """The diffusers ``config.json`` mapping (the original one when built from a mapping)."""
        if self.raw:
            return dict(self.raw)
        config = {key: value for key, value in self.unet.to_dict().items() if key != "up_block_types"}
        config.update(
            _class_name="ControlNetModel",
            layers_per_block=self.unet.layers_per_block[0],
            conditioning_channels=self.conditioning_channels,
            conditioning_embedding_out_channels=list(self.conditioning_embedding_out_channels),
            controlnet_conditioning_channel_order=self.channel_order,
            global_pool_conditions=self.global_pool_conditions,
        )
        return config


def residual_layout(config: UNetConfig) -> list[tuple[int, int]]:
    """``(channels, downscale)`` of every ``unet.residuals`` entry (skips in order, then the middle block)."""
    layout = [(config.block_out_channels[0], 1)]
    scale = 1
    for block, width in enumerate(config.block_out_channels):
        layout += [(width, scale)] * config.layers_per_block[block]
        if block < config.num_blocks - 1:
            scale *= 2
            layout.append((width, scale))
    layout.append((config.block_out_channels[-1], scale))
    return layout


def check_compatible(config: ControlNetConfig, unet: UNetConfig, source: str = "ControlNet") -> None:
    """Raise :class:`AdapterError` listing every way the ControlNet ``config`` does not fit a UNet of ``unet``."""
    problems = []
    if config.unet.topology != unet.topology:
        problems.append(f"it is a {config.unet.topology} ControlNet, the UNet is {unet.topology}")
    ours, theirs = residual_layout(config.unet), residual_layout(unet)
    if ours != theirs:
        problems.append(f"residuals (channels, downscale) {ours} vs the UNet's {theirs}")
    if config.unet.cross_attention_dim != unet.cross_attention_dim:
        problems.append(f"cross_attention_dim {config.unet.cross_attention_dim} vs {unet.cross_attention_dim}")
    if config.unet.in_channels != unet.in_channels:
        problems.append(f"in_channels {config.unet.in_channels} vs {unet.in_channels}")
    if config.unet.projection_class_embeddings_input_dim != unet.projection_class_embeddings_input_dim:
        problems.append(
            f"projection_class_embeddings_input_dim {config.unet.projection_class_embeddings_input_dim} "
            f"vs {unet.projection_class_embeddings_input_dim}"
        )
    if problems:
        raise AdapterError(f"{source} does not fit this UNet: " + "; ".join(problems))


# ---- architecture from tensor shapes -------------------------------------------------------------------


def _indices(keys: list[str], pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(match.group(1)) for key in keys if (match := regex.match(key))})


def _shape(state_dict: Mapping[str, torch.Tensor], key: str, source: str) -> torch.Size:
    if key not in state_dict:
        raise WeightsError(f"{source}: cannot infer the ControlNet architecture, key {key!r} is missing")
    return state_dict[key].shape


def infer_config(
    state_dict: Mapping[str, torch.Tensor], unet: UNetConfig, source: str = "state dict"
) -> dict[str, Any]:
    """A diffusers ``ControlNetModel`` config for a diffusers-named ControlNet ``state_dict``.

    Block widths, layers, attention placement and depth, projections, the SDXL extra embedding and
    the condition encoder are read from tensor shapes; what shapes cannot tell (attention heads,
    normalisation groups and eps, sinusoidal settings, SDXL time-id width) is taken from ``unet``, the
    config of the UNet the ControlNet is meant for.
    """
    keys = list(state_dict)
    blocks = _indices(keys, r"down_blocks\.(\d+)\.")
    if not blocks or blocks != list(range(len(blocks))):
        raise WeightsError(f"{source}: cannot infer the ControlNet architecture, no down_blocks.N keys")
    channels = [_shape(state_dict, f"down_blocks.{block}.resnets.0.conv1.weight", source)[0] for block in blocks]
    layers = [len(_indices(keys, rf"down_blocks\.{block}\.resnets\.(\d+)\.")) for block in blocks]
    if len(set(layers)) != 1:
        raise WeightsError(f"{source}: down blocks have different numbers of resnets {layers}")
    attention = [bool(_indices(keys, rf"down_blocks\.{block}\.attentions\.(\d+)\.")) for block in blocks]
    depths = [len(_indices(keys, rf"down_blocks\.{block}\.attentions\.0\.transformer_blocks\.(\d+)\.")) or 1
              for block in blocks]  # fmt: skip
    middle_depth = len(_indices(keys, r"mid_block\.attentions\.0\.transformer_blocks\.(\d+)\."))
    if attention[-1] and depths[-1] != middle_depth:
        raise WeightsError(
            f"{source}: last down block depth {depths[-1]} differs from the middle block's {middle_depth}"
        )
    depths[-1] = middle_depth or depths[-1]
    to_k = sorted(key for key in keys if key.endswith("attn2.to_k.weight"))
    proj_in = sorted(key for key in keys if key.endswith(".proj_in.weight"))
    cond_blocks = _indices(keys, r"controlnet_cond_embedding\.blocks\.(\d+)\.weight")
    cond_in = _shape(state_dict, "controlnet_cond_embedding.conv_in.weight", source)
    cond_channels = [cond_in[0]] + [
        state_dict[f"controlnet_cond_embedding.blocks.{index}.weight"].shape[0] for index in cond_blocks[1::2]
    ]
    config: dict[str, Any] = {
        "_class_name": "ControlNetModel",
        "block_out_channels": channels,
        "down_block_types": ["CrossAttnDownBlock2D" if flag else "DownBlock2D" for flag in attention],
        "layers_per_block": layers[0],
        "transformer_layers_per_block": depths,
        "attention_head_dim": list(unet.num_attention_heads),
        "cross_attention_dim": state_dict[to_k[0]].shape[1] if to_k else unet.cross_attention_dim[0],
        "use_linear_projection": bool(proj_in) and state_dict[proj_in[0]].dim() == 2,
        "in_channels": _shape(state_dict, "conv_in.weight", source)[1],
        "norm_num_groups": unet.norm_num_groups,
        "norm_eps": unet.norm_eps,
        "flip_sin_to_cos": unet.flip_sin_to_cos,
        "freq_shift": unet.freq_shift,
        "conditioning_channels": cond_in[1],
        "conditioning_embedding_out_channels": cond_channels,
    }
    if "add_embedding.linear_1.weight" in state_dict:
        if unet.addition_time_embed_dim is None:
            raise AdapterError(f"{source} is an SDXL ControlNet (add_embedding.* keys); the UNet is {unet.topology}")
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=unet.addition_time_embed_dim,
            projection_class_embeddings_input_dim=state_dict["add_embedding.linear_1.weight"].shape[1],
        )
    return config
