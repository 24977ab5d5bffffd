"""The UNet Chain shared by SD1.5 and SDXL, built from a :class:`~refiners_sd.unet.config.UNetConfig`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from refiners_core import Chain, Contexts, Sum
from refiners_core.adapter import unwrap_adapters
from refiners_sd.unet.blocks import (
    CROSS_ATTENTION_CONTEXT,
    DIFFUSION_CONTEXT,
    TEXT_EMBEDDING_KEY,
    CrossAttention,
    CrossAttentionBlock2d,
    DownBlock,
    DownBlocks,
    DownLayer,
    DownsampleLayer,
    InputConv,
    MiddleBlock,
    OutputBlock,
    ResidualBlock,
    TextTimeEmbedding,
    TimestepEmbedding,
    TimestepEncoder,
    UpBlock,
    UpBlocks,
    UpLayer,
    Upsampler,
)
from refiners_sd.unet.config import UNetConfig, UnsupportedConfigError
from refiners_sd.unet.layers import (
    RESIDUALS_KEY,
    UNET_CONTEXT,
    AddResidual,
    ResetResiduals,
    ResidualAccumulator,
    ResidualConcatenator,
)

__all__ = ["UNet", "count_residuals"]

Device = torch.device | str | None


def count_residuals(config: UNetConfig) -> int:
    """Entries of ``unet.residuals``: conv_in + every down resnet + every downsampler, + 1 for the middle block."""
    return 1 + sum(config.layers_per_block) + (config.num_blocks - 1) + 1


def build_unet_layers(
    config: UNetConfig, device: Device = None, dtype: torch.dtype | None = None, encoder_only: bool = False
) -> list[Chain | ResetResiduals]:
    """The children of a UNet for ``config``: ``ResetResiduals``, ``TimestepEncoder``, ``DownBlocks``,
    ``MiddleBlock``, ``AddResidual``, ``UpBlocks``, ``OutputBlock``.

    With ``encoder_only`` the up path and output block are not built (a ControlNet copies the encoder half).
    """
    channels = config.block_out_channels
    groups, eps, time_dim = config.norm_num_groups, config.norm_eps, config.time_embedding_dim
    for value in channels:
        if value % groups:
            raise UnsupportedConfigError(
                f"block_out_channels {channels} are not all divisible by norm_num_groups={groups}"
            )
    num_residuals = count_residuals(config)
    timestep: Chain = TimestepEmbedding(
        channels[0], time_dim, config.flip_sin_to_cos, config.freq_shift, device=device, dtype=dtype
    )
    if config.addition_embed_type == "text_time":
        assert config.addition_time_embed_dim is not None and config.projection_class_embeddings_input_dim is not None
        timestep = Sum(
            timestep,
            TextTimeEmbedding(
                config.addition_time_embed_dim,
                config.projection_class_embeddings_input_dim,
                time_dim,
                config.flip_sin_to_cos,
                config.freq_shift,
                device=device,
                dtype=dtype,
            ),
        )

    def attention(block: int, width: int) -> CrossAttentionBlock2d:
        return CrossAttentionBlock2d(
            width,
            num_heads=config.num_attention_heads[block],
            context_dim=config.cross_attention_dim[block],
            depth=config.transformer_layers_per_block[block],
            num_groups=groups,
            use_linear_projection=config.use_linear_projection,
            device=device,
            dtype=dtype,
        )

    def resnet(in_channels: int, out_channels: int) -> ResidualBlock:
        return ResidualBlock(in_channels, out_channels, time_dim, groups, eps, device=device, dtype=dtype)

    # down path: skip n is recorded by the n-th ResidualAccumulator
    skip = 0
    skip_channels = [channels[0]]
    down_blocks: list[Chain] = [InputConv(config.in_channels, channels[0], device=device, dtype=dtype)]
    previous = channels[0]
    for block, width in enumerate(channels):
        layers: list[Chain] = []
        for index in range(config.layers_per_block[block]):
            skip += 1
            units: list[Any] = [resnet(previous if index == 0 else width, width)]
            if config.has_attention(block):
                units.append(attention(block, width))
            layers.append(DownLayer(*units, ResidualAccumulator(skip)))
            skip_channels.append(width)
        if block < config.num_blocks - 1:
            skip += 1
            layers.append(DownsampleLayer(width, skip, device=device, dtype=dtype))
            skip_channels.append(width)
        down_blocks.append(DownBlock(*layers))
        previous = width
    middle_index = skip + 1
    assert middle_index == num_residuals - 1

    last = config.num_blocks - 1
    middle = MiddleBlock(
        resnet(channels[-1], channels[-1]), attention(last, channels[-1]), resnet(channels[-1], channels[-1])
    )
    encoder: list[Chain | ResetResiduals] = [
        ResetResiduals(num_residuals),
        TimestepEncoder(timestep),
        DownBlocks(*down_blocks),
        middle,
        AddResidual(middle_index),
    ]
    if encoder_only:
        return encoder

    # up path: reads the skips back in reverse order
    up_blocks: list[Chain] = []
    previous = channels[-1]
    for up, width in enumerate(reversed(channels)):
        block = last - up
        layers = []
        for index in range(config.layers_per_block[block] + 1):
            skip_width = skip_channels[skip]
            units = [ResidualConcatenator(skip), resnet((previous if index == 0 else width) + skip_width, width)]
            if config.has_attention(up, up=True):
                units.append(attention(block, width))
            layers.append(UpLayer(*units))
            skip -= 1
        if up < last:
            layers.append(Upsampler(width, skip, device=device, dtype=dtype))
        up_blocks.append(UpBlock(*layers))
        previous = width
    assert skip == -1

    return [
        *encoder,
        UpBlocks(*up_blocks),
        OutputBlock(channels[0], config.out_channels, groups, eps, device=device, dtype=dtype),
    ]


class UNet(Chain):
    """A Stable Diffusion UNet built from a diffusers UNet config (base of :class:`SD1UNet` and :class:`SDXLUNet`).

    Inputs travel through contexts: call :meth:`set_timestep` and :meth:`set_clip_text_embedding`
    (and the SDXL setters), then ``unet(x)`` on latents ``[B, C, H, W]``.
    """

    default_config: Mapping[str, Any] = {}
    topology: str = ""

    def __init__(
        self,
        config: UNetConfig | Mapping[str, Any] | None = None,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if config is None:
            config = self.default_config
        if not isinstance(config, UNetConfig):
            config = UNetConfig.from_dict(config)
        if config.topology != self.topology:
            raise UnsupportedConfigError(
                f"{type(self).__name__} needs a {self.topology} config, got addition_embed_type="
                f"{config.addition_embed_type!r}; use refiners_sd.load_unet to pick the class from the config"
            )
        self.config = config
        self.num_residuals = count_residuals(config)
        super().__init__(*build_unet_layers(config, device, dtype))

    def init_context(self) -> Contexts:
        """``unet.residuals`` (skip connections), ``diffusion`` (timestep...) and ``cross_attention_block``."""
        return {
            UNET_CONTEXT: {RESIDUALS_KEY: [0.0] * self.num_residuals},
            DIFFUSION_CONTEXT: {},
            CROSS_ATTENTION_CONTEXT: {},
        }

    # ---- inputs --------------------------------------------------------------------------------

    def set_timestep(self, timestep: torch.Tensor | float | int) -> None:
        """Set the diffusion timestep: a number, a 0-d tensor, or one value per batch item ``[B]``."""
        self.set_context(DIFFUSION_CONTEXT, {"timestep": torch.as_tensor(timestep)})

    def set_clip_text_embedding(self, clip_text_embedding: torch.Tensor) -> None:
        """Set the text embedding ``[B, tokens, cross_attention_dim]`` read by every cross-attention."""
        self.set_context(CROSS_ATTENTION_CONTEXT, {TEXT_EMBEDDING_KEY: clip_text_embedding})

    # ---- structure helpers for adapters --------------------------------------------------------

    def _trunk(self, layer_type: type[Chain]) -> list[Any]:
        """Direct children of this UNet of ``layer_type``, injected adapters looked through.

        Adapters holding a copy of the UNet's blocks (a ControlNet's encoder) are not searched.
        """
        return [child for child in map(unwrap_adapters, self) if isinstance(child, layer_type)]

    def cross_attentions(self) -> list[CrossAttention]:
        """Every text :class:`CrossAttention` of the UNet itself, in tree order (down, mid, up blocks; see
        :func:`~refiners_sd.unet.mapping.attention_processor_names` for diffusers' processor order).

        Layers of an injected ControlNet's encoder are not included."""
        parts = [*self._trunk(DownBlocks), *self._trunk(MiddleBlock), *self._trunk(UpBlocks)]
        return [layer for part in parts for layer in part.layers(CrossAttention)]

    def down_block_end(self, block: int) -> Chain:
        """The Chain ending down block ``block``, where a T2I-Adapter feature is added before its skip.

        Insert a layer right before the returned Chain's ``ResidualAccumulator``. Following diffusers'
        ``down_intrablock_additional_residuals``: for a block with cross-attention it is the last
        :class:`DownLayer` (after the last resnet/attention pair, before the downsampler); for a
        block without attention it is the block's last layer (the ``DownsampleLayer`` if it has one).
        """
        blocks = [unwrap_adapters(child) for child in self._trunk(DownBlocks)[0]]
        down_blocks = [child for child in blocks if isinstance(child, DownBlock)]
        if not 0 <= block < len(down_blocks):
            raise IndexError(f"down block {block} out of range (the UNet has {len(down_blocks)})")
        layers = [unwrap_adapters(child) for child in down_blocks[block]]
        if self.config.has_attention(block):
            return [layer for layer in layers if isinstance(layer, DownLayer)][-1]
        return [layer for layer in layers if isinstance(layer, DownLayer | DownsampleLayer)][-1]

    # ---- diffusers weights ---------------------------------------------------------------------

    @classmethod
    def from_diffusers(
        cls,
        path: str | Path,
        device: Device = None,
        dtype: torch.dtype | None = None,
        *,
        config: str | Path | Mapping[str, Any] | None = None,
        variant: str | None = None,
    ) -> UNet:
        """Load a diffusers UNet: a folder (``config.json`` + ``diffusion_pytorch_model[.fp16].safetensors``,
        or a sharded index), or a single safetensors file with diffusers keys plus ``config``
        (a mapping, a ``config.json`` path, or by default the ``config.json`` next to the file).

        Weights are matched by name; missing or unexpected keys raise ``WeightsError`` listing them.
        ``dtype=None`` keeps the file's dtype.
        """
        from refiners_sd.unet.loading import load_unet

        return load_unet(path, device=device, dtype=dtype, config=config, variant=variant, unet_class=cls)

    def save_diffusers(self, path: str | Path, variant: str | None = None) -> Path:
        """Write ``config.json`` and ``diffusion_pytorch_model[.variant].safetensors`` with diffusers keys."""
        from refiners_sd.unet.loading import save_diffusers

        return save_diffusers(self, path, variant=variant)
