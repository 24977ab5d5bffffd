"""Load diffusers ``AutoencoderKL`` folders into :class:`~refiners_sd.vae.model.AutoencoderKL` by name."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from refiners_core import Chain, Identity, find_weight_files, load_weight_files
from refiners_core.module_map import load_by_module_map
from refiners_sd.vae.config import AutoencoderConfig
from refiners_sd.vae.layers import Resnet, SelfAttention2d
from refiners_sd.vae.model import AutoencoderKL, Decoder, Encoder, MiddleBlock

__all__ = ["autoencoder_module_map", "load_autoencoder"]

A = TypeVar("A", bound=AutoencoderKL)

WEIGHTS_NAME = "diffusion_pytorch_model"
# Checkpoints saved before diffusers 0.14 name the VAE attention projections differently.
LEGACY_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _resnet_map(prefix: str, resnet: Resnet) -> dict[str, nn.Module]:
    shortcut, main = resnet[0], resnet[1]
    assert isinstance(main, Chain)
    mapping: dict[str, nn.Module] = {
        f"{prefix}.norm1": main[0],
        f"{prefix}.conv1": main[2],
        f"{prefix}.norm2": main[3],
        f"{prefix}.conv2": main[5],
    }
    if not isinstance(shortcut, Identity):
        mapping[f"{prefix}.conv_shortcut"] = shortcut
    return mapping


def _attention_map(prefix: str, block: SelfAttention2d) -> dict[str, nn.Module]:
    attention = block.layer("Parallel.Chain.SelfAttention.Attention", Chain)
    q, k, v = attention.layer("Distribute", Chain)
    return {
        f"{prefix}.group_norm": block.layer("GroupNorm"),
        f"{prefix}.to_q": q,
        f"{prefix}.to_k": k,
        f"{prefix}.to_v": v,
        f"{prefix}.to_out.0": attention.layer("Linear"),
    }


def _middle_map(prefix: str, middle: MiddleBlock) -> dict[str, nn.Module]:
    mapping: dict[str, nn.Module] = {}
    for index, resnet in enumerate(middle.layers(Resnet)):
        mapping.update(_resnet_map(f"{prefix}.resnets.{index}", resnet))
    attention = middle.find(SelfAttention2d)
    if attention is not None:
        mapping.update(_attention_map(f"{prefix}.attentions.0", attention))
    return mapping


def _blocks_map(prefix: str, kind: str, sampler: str, blocks: Chain) -> dict[str, nn.Module]:
    mapping: dict[str, nn.Module] = {}
    for block_index, block in enumerate(blocks):
        assert isinstance(block, Chain)
        for index, resnet in enumerate(block.layers(Resnet)):
            mapping.update(_resnet_map(f"{prefix}.{kind}.{block_index}.resnets.{index}", resnet))
        last = block[-1]
        if not isinstance(last, Resnet):  # Downsample / Upsample: its conv is the last child
            assert isinstance(last, Chain)
            mapping[f"{prefix}.{kind}.{block_index}.{sampler}.0.conv"] = last[-1]
    return mapping


def autoencoder_module_map(autoencoder: AutoencoderKL) -> dict[str, nn.Module]:
    """diffusers module names -> our leaves, for the whole autoencoder."""
    encoder: Encoder = autoencoder.encoder
    decoder: Decoder = autoencoder.decoder
    config = autoencoder.config
    mapping: dict[str, nn.Module] = {"encoder.conv_in": encoder[0]}
    mapping.update(_blocks_map("encoder", "down_blocks", "downsamplers", encoder.layer(1, Chain)))
    mapping.update(_middle_map("encoder.mid_block", encoder.layer("MiddleBlock", MiddleBlock)))
    encoder_out = encoder.layer("OutputBlock", Chain)
    mapping["encoder.conv_norm_out"] = encoder_out[0]
    mapping["encoder.conv_out"] = encoder_out[2]
    if config.use_quant_conv:
        mapping["quant_conv"] = encoder[-1]

    offset = 1 if config.use_post_quant_conv else 0
    if config.use_post_quant_conv:
        mapping["post_quant_conv"] = decoder[0]
    mapping["decoder.conv_in"] = decoder[offset]
    mapping.update(_middle_map("decoder.mid_block", decoder.layer("MiddleBlock", MiddleBlock)))
    mapping.update(_blocks_map("decoder", "up_blocks", "upsamplers", decoder.layer(offset + 2, Chain)))
    decoder_out = decoder.layer("OutputBlock", Chain)
    mapping["decoder.conv_norm_out"] = decoder_out[0]
    mapping["decoder.conv_out"] = decoder_out[2]
    return mapping


def _modernize(key: str) -> str:
    """Rename a legacy attention key (``...attentions.0.query.weight`` -> ``...attentions.0.to_q.weight``)."""
    head, _, leaf = key.rpartition(".")
    block, _, name = head.rpartition(".")
    if ".attentions." in key and name in LEGACY_ATTENTION_NAMES:
        return f"{block}.{LEGACY_ATTENTION_NAMES[name]}.{leaf}"
    return key


def load_autoencoder(
    cls: type[A],
    path: str | Path,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    variant: str | None = None,
) -> A:
    """Build ``cls`` from ``path/config.json`` and load its weights by name (see ``AutoencoderKL.from_diffusers``)."""
    folder = Path(path)
    config = AutoencoderConfig.from_file(folder)
    files = find_weight_files(folder, WEIGHTS_NAME, variant=variant, what="diffusers VAE weights")
    weights_path = files[0] if len(files) == 1 else folder
    state_dict = {_modernize(key): value for key, value in load_weight_files(files, device, dtype).items()}
    autoencoder = cls(config, device=device, dtype=dtype)
    load_by_module_map(autoencoder, autoencoder_module_map(autoencoder), state_dict, source=str(weights_path))
    return autoencoder.eval()
