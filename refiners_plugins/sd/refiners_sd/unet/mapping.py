"""Names: diffusers module names <-> layers of our UNets, and LDM (original / kohya) names <-> diffusers names.

* :func:`diffusers_module_map` walks a UNet and returns ``{diffusers module name: our layer}``
  (``"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q" -> Linear``). Loading and saving
  diffusers weights use it, and so can adapter plugins (LoRA key matching). Adapters already
  injected are looked through: the map always gives the original layer (the adapter's target).
* :func:`ldm_to_diffusers_name` / :func:`diffusers_to_ldm_name` translate between the LDM names
  (``input_blocks.4.1.transformer_blocks.0.attn1.to_q``, ``middle_block.*``, ``output_blocks.*``,
  ``time_embed.*``, ``label_emb.*``, ``out.*``) and diffusers names, computed from the config.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import refiners_core as rc
from refiners_sd.configs import KNOWN_CONFIGS
from refiners_sd.unet.config import UNetConfig

if TYPE_CHECKING:
    from torch import nn

    from refiners_core import Chain
    from refiners_sd.unet.model import UNet

__all__ = [
    "attention_processor_names",
    "diffusers_module_map",
    "diffusers_to_ldm_name",
    "ldm_module_map",
    "ldm_to_diffusers_name",
    "resolve_config",
]

# inside a resnet, LDM name -> diffusers name
_RESNET_LDM_TO_DIFFUSERS = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_RESNET_DIFFUSERS_TO_LDM = {value: key for key, value in _RESNET_LDM_TO_DIFFUSERS.items()}


# ---- diffusers name -> our layer -------------------------------------------------------------------


def _get(chain: Any, path: str) -> Any:
    """Child at a dotted path of child names, looking through injected adapters at every step."""
    current = rc.unwrap_adapters(chain)
    for name in path.split("."):
        current = rc.unwrap_adapters(current[name])
    return current


def _typed(chain: Any, layer_type: type) -> list[Any]:
    """Direct children of ``chain`` of ``layer_type`` (adapters looked through), in order."""
    return [child for child in map(rc.unwrap_adapters, rc.unwrap_adapters(chain)) if isinstance(child, layer_type)]


def _attention_map(prefix: str, attention: Any) -> dict[str, nn.Module]:
    projections = _get(attention, "Distribute")
    return {
        prefix: attention,
        f"{prefix}.to_q": _get(projections, "Linear_1"),
        f"{prefix}.to_k": _get(projections, "Linear_2"),
        f"{prefix}.to_v": _get(projections, "Linear_3"),
        f"{prefix}.to_out.0": _get(attention, "Linear"),
    }


def _transformer_block_map(prefix: str, block: Any) -> dict[str, nn.Module]:
    mapping: dict[str, nn.Module] = {prefix: block}
    mapping[f"{prefix}.norm1"] = _get(block, "Residual_1.LayerNorm")
    mapping.update(_attention_map(f"{prefix}.attn1", _get(block, "Residual_1.SelfAttention.Attention")))
    mapping[f"{prefix}.norm2"] = _get(block, "Residual_2.LayerNorm")
    mapping.update(_attention_map(f"{prefix}.attn2", _get(block, "Residual_2.CrossAttention")))
    mapping[f"{prefix}.norm3"] = _get(block, "Residual_3.LayerNorm")
    mapping[f"{prefix}.ff"] = _get(block, "Residual_3.FeedForward")
    mapping[f"{prefix}.ff.net.0.proj"] = _get(block, "Residual_3.FeedForward.Linear_1")
    mapping[f"{prefix}.ff.net.2"] = _get(block, "Residual_3.FeedForward.Linear_2")
    return mapping


def _transformer_2d_map(prefix: str, block: Any) -> dict[str, nn.Module]:
    from refiners_sd.unet.blocks import CrossAttentionBlock

    tokens = _get(block, "Parallel.Chain")
    mapping: dict[str, nn.Module] = {prefix: block, f"{prefix}.norm": _get(tokens, "GroupNorm")}
    names = rc.unwrap_adapters(tokens).children_names
    if "Linear_1" in names:
        mapping[f"{prefix}.proj_in"] = _get(tokens, "Linear_1")
        mapping[f"{prefix}.proj_out"] = _get(tokens, "Linear_2")
    else:
        mapping[f"{prefix}.proj_in"] = _get(tokens, "Conv2d")
        mapping[f"{prefix}.proj_out"] = _get(block, "Conv2d")
    for index, transformer in enumerate(_typed(tokens, CrossAttentionBlock)):
        mapping.update(_transformer_block_map(f"{prefix}.transformer_blocks.{index}", transformer))
    return mapping


def _resnet_map(prefix: str, block: Any) -> dict[str, nn.Module]:
    mapping: dict[str, nn.Module] = {
        prefix: block,
        f"{prefix}.norm1": _get(block, "Chain.GroupNorm_1"),
        f"{prefix}.conv1": _get(block, "Chain.Conv2d_1"),
        f"{prefix}.time_emb_proj": _get(block, "Chain.AddTimestepEmbedding.Linear"),
        f"{prefix}.norm2": _get(block, "Chain.GroupNorm_2"),
        f"{prefix}.conv2": _get(block, "Chain.Conv2d_2"),
    }
    if "Conv2d" in rc.unwrap_adapters(block).children_names:
        mapping[f"{prefix}.conv_shortcut"] = _get(block, "Conv2d")
    return mapping


def _layer_map(prefix: str, index: int, layer: Any) -> dict[str, nn.Module]:
    from refiners_sd.unet.blocks import CrossAttentionBlock2d, ResidualBlock

    mapping = _resnet_map(f"{prefix}.resnets.{index}", _typed(layer, ResidualBlock)[0])
    attentions = _typed(layer, CrossAttentionBlock2d)
    if attentions:
        mapping.update(_transformer_2d_map(f"{prefix}.attentions.{index}", attentions[0]))
    return mapping


def diffusers_module_map(unet: Chain, leaves_only: bool = True) -> dict[str, nn.Module]:
    """``{diffusers module name: layer}`` for every weighted layer of ``unet`` (Linear, Conv2d, norms).

    With ``leaves_only=False`` the containers are included too: ``down_blocks.0.resnets.1`` (a
    ``ResidualBlock``), ``...attentions.0`` (``CrossAttentionBlock2d``), ``...transformer_blocks.0``
    (``CrossAttentionBlock``), ``...attn1`` (the self ``Attention``), ``...attn2`` (``CrossAttention``),
    ``...ff``, ``mid_block``, ``down_blocks.i``, ``up_blocks.i``, ``time_embedding``, ``add_embedding``.
    Injected adapters are looked through (their targets are returned). ``unet`` may also be any Chain
    holding only the encoder half (``build_unet_layers(..., encoder_only=True)``, as a ControlNet does):
    the up-path and output names are then absent.
    """
    from refiners_core import Sum
    from refiners_sd.unet.blocks import (
        DownBlock,
        DownBlocks,
        DownLayer,
        DownsampleLayer,
        MiddleBlock,
        OutputBlock,
        TextTimeEmbedding,
        TimestepEmbedding,
        TimestepEncoder,
        UpBlock,
        UpBlocks,
        UpLayer,
        Upsampler,
    )

    mapping: dict[str, nn.Module] = {}
    encoder = _typed(unet, TimestepEncoder)[0]
    embedding = rc.unwrap_adapters(encoder[0])
    time = _typed(embedding, TimestepEmbedding)[0] if isinstance(embedding, Sum) else embedding
    mapping["time_embedding"] = time
    mapping["time_embedding.linear_1"] = _get(time, "Linear_1")
    mapping["time_embedding.linear_2"] = _get(time, "Linear_2")
    if isinstance(embedding, Sum):
        extra = _typed(embedding, TextTimeEmbedding)[0]
        mapping["add_embedding"] = extra
        mapping["add_embedding.linear_1"] = _get(extra, "Linear_1")
        mapping["add_embedding.linear_2"] = _get(extra, "Linear_2")

    down = _typed(unet, DownBlocks)[0]
    mapping["conv_in"] = _get(down, "InputConv.Conv2d")
    for block_index, block in enumerate(_typed(down, DownBlock)):
        prefix = f"down_blocks.{block_index}"
        mapping[prefix] = block
        for index, layer in enumerate(_typed(block, DownLayer)):
            mapping.update(_layer_map(prefix, index, layer))
        for layer in _typed(block, DownsampleLayer):
            mapping[f"{prefix}.downsamplers.0"] = _get(layer, "Downsample")
            mapping[f"{prefix}.downsamplers.0.conv"] = _get(layer, "Downsample.Conv2d")

    middle = _typed(unet, MiddleBlock)[0]
    mapping["mid_block"] = middle
    mapping.update(_resnet_map("mid_block.resnets.0", _get(middle, "ResidualBlock_1")))
    mapping.update(_transformer_2d_map("mid_block.attentions.0", _get(middle, "CrossAttentionBlock2d")))
    mapping.update(_resnet_map("mid_block.resnets.1", _get(middle, "ResidualBlock_2")))

    up_blocks = _typed(unet, UpBlocks)
    for block_index, block in enumerate(_typed(up_blocks[0], UpBlock) if up_blocks else []):
        prefix = f"up_blocks.{block_index}"
        mapping[prefix] = block
        for index, layer in enumerate(_typed(block, UpLayer)):
            mapping.update(_layer_map(prefix, index, layer))
        for layer in _typed(block, Upsampler):
            mapping[f"{prefix}.upsamplers.0"] = layer
            mapping[f"{prefix}.upsamplers.0.conv"] = _get(layer, "Conv2d")

    for output in _typed(unet, OutputBlock)[:1]:
        mapping["conv_norm_out"] = _get(output, "GroupNorm")
        mapping["conv_out"] = _get(output, "Conv2d")
    if leaves_only:
        return {name: module for name, module in mapping.items() if _is_weighted_leaf(module)}
    return mapping


def attention_processor_names(unet: UNet) -> list[str]:
    """Names of every ``attn1`` / ``attn2`` in the order of diffusers' ``attn_processors`` (down blocks,
    up blocks, then the mid block), the order IP-Adapter weight files index (``"1.to_k_ip"`` is the
    second entry). Resolve each with ``diffusers_module_map(unet, leaves_only=False)[name]``."""
    groups = {"down_blocks": 0, "up_blocks": 1, "mid_block": 2}
    names = [name for name in diffusers_module_map(unet, leaves_only=False) if name.endswith((".attn1", ".attn2"))]
    return sorted(names, key=lambda name: groups[name.split(".")[0]])  # stable: keeps order within a group


def _is_weighted_leaf(module: nn.Module) -> bool:
    return not any(True for _ in module.children()) and any(True for _ in module.parameters(recurse=False))


# ---- LDM names <-> diffusers names -----------------------------------------------------------------


def resolve_config(topology: Any) -> UNetConfig:
    """A :class:`UNetConfig` from ``"sd15"`` / ``"sdxl"``, a config mapping, a ``UNetConfig`` or a UNet."""
    if isinstance(topology, UNetConfig):
        return topology
    if isinstance(topology, str):
        if topology not in KNOWN_CONFIGS:
            raise ValueError(f"unknown UNet topology {topology!r} (known: {', '.join(KNOWN_CONFIGS)})")
        return UNetConfig.from_dict(KNOWN_CONFIGS[topology])
    if isinstance(topology, Mapping):
        return UNetConfig.from_dict(topology)
    config = getattr(topology, "config", None)
    if isinstance(config, UNetConfig):
        return config
    raise TypeError(f"cannot get a UNet config from {type(topology).__name__}")


@lru_cache(maxsize=16)
def _block_table(config: UNetConfig) -> tuple[tuple[str, str, bool], ...]:
    """``(ldm prefix, diffusers prefix, is_resnet)`` for every block of the UNet described by ``config``."""
    table: list[tuple[str, str, bool]] = [
        ("time_embed.0", "time_embedding.linear_1", False),
        ("time_embed.2", "time_embedding.linear_2", False),
    ]
    if config.addition_embed_type == "text_time":
        table += [
            ("label_emb.0.0", "add_embedding.linear_1", False),
            ("label_emb.0.2", "add_embedding.linear_2", False),
        ]
    table.append(("input_blocks.0.0", "conv_in", False))
    position = 1
    last = config.num_blocks - 1
    for block in range(config.num_blocks):
        for index in range(config.layers_per_block[block]):
            table.append((f"input_blocks.{position}.0", f"down_blocks.{block}.resnets.{index}", True))
            if config.has_attention(block):
                table.append((f"input_blocks.{position}.1", f"down_blocks.{block}.attentions.{index}", False))
            position += 1
        if block < last:
            table.append((f"input_blocks.{position}.0.op", f"down_blocks.{block}.downsamplers.0.conv", False))
            position += 1
    table += [
        ("middle_block.0", "mid_block.resnets.0", True),
        ("middle_block.1", "mid_block.attentions.0", False),
        ("middle_block.2", "mid_block.resnets.1", True),
    ]
    position = 0
    for up in range(config.num_blocks):
        attention = config.has_attention(up, up=True)
        count = config.layers_per_block[last - up] + 1
        for index in range(count):
            table.append((f"output_blocks.{position}.0", f"up_blocks.{up}.resnets.{index}", True))
            if attention:
                table.append((f"output_blocks.{position}.1", f"up_blocks.{up}.attentions.{index}", False))
            if index == count - 1 and up < last:
                slot = 2 if attention else 1
                table.append((f"output_blocks.{position}.{slot}.conv", f"up_blocks.{up}.upsamplers.0.conv", False))
            position += 1
    table += [("out.0", "conv_norm_out", False), ("out.2", "conv_out", False)]
    return tuple(table)


def _translate(name: str, config: UNetConfig, to_diffusers: bool) -> str:
    segments = name.split(".")
    best: tuple[int, str, bool] | None = None
    for ldm, diffusers, is_resnet in _block_table(config):
        source, target = (ldm, diffusers) if to_diffusers else (diffusers, ldm)
        parts = source.split(".")
        if segments[: len(parts)] == parts and (best is None or len(parts) > best[0]):
            best = (len(parts), target, is_resnet)
    if best is None:
        style = "LDM" if to_diffusers else "diffusers"
        raise KeyError(f"{name!r} is not a {style} UNet module name of this topology")
    length, target, is_resnet = best
    rest = segments[length:]
    if is_resnet and rest:
        renames = _RESNET_LDM_TO_DIFFUSERS if to_diffusers else _RESNET_DIFFUSERS_TO_LDM
        for source, replacement in renames.items():
            parts = source.split(".")
            if rest[: len(parts)] == parts:
                rest = replacement.split(".") + rest[len(parts) :]
                break
        else:
            raise KeyError(f"{name!r}: unknown resnet layer {'.'.join(rest)!r}")
    return ".".join([target, *rest])


def ldm_to_diffusers_name(name: str, topology: Any = "sd15") -> str:
    """Translate an LDM UNet name (``input_blocks.4.1.transformer_blocks.0.attn1.to_q[.weight]``) to diffusers.

    ``topology`` is ``"sd15"``, ``"sdxl"``, a config mapping, a ``UNetConfig`` or a UNet: block
    numbering is computed from it. Raises ``KeyError`` for a name outside the UNet.
    """
    return _translate(name, resolve_config(topology), to_diffusers=True)


def diffusers_to_ldm_name(name: str, topology: Any = "sd15") -> str:
    """Translate a diffusers UNet name (``down_blocks.1.attentions.0...``) to its LDM name (inverse of
    :func:`ldm_to_diffusers_name`)."""
    return _translate(name, resolve_config(topology), to_diffusers=False)


def ldm_module_map(unet: UNet) -> dict[str, nn.Module]:
    """``{LDM module name: layer}`` for every weighted layer (kohya LoRA files use these names, with
    ``_`` in place of ``.``)."""
    return {diffusers_to_ldm_name(name, unet.config): module for name, module in diffusers_module_map(unet).items()}
