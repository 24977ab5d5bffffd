"""Key names of the single-file layout, translated to the names our module maps already read.

* VAE: LDM names (``encoder.down.0.block.1.conv1``, ``decoder.up.3.upsample.conv``, ``mid.attn_1.q``...)
  <-> diffusers names (``encoder.down_blocks.0.resnets.1.conv1``...); LDM attention projections are 1x1
  convolutions (``[C, C, 1, 1]``), diffusers' are linear (``[C, C]``).
* CLIP ViT-L: transformers names, with or without ``text_model.``.
* OpenCLIP ViT-bigG: open_clip names (``transformer.resblocks.N.attn.in_proj_weight`` holding q, k and v
  stacked, ``text_projection`` applied as ``x @ P``) <-> transformers names.

Tensors are renamed, and reshaped or split as views where possible (the bigG projection, 1280x1280, is
the one tensor copied), so no second copy of a model is made.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

__all__ = [
    "diffusers_vae_to_ldm",
    "ldm_vae_to_diffusers",
    "open_clip_to_transformers",
    "strip_text_model",
    "transformers_to_open_clip",
    "vae_block_count",
]

_RESNET = {"nin_shortcut": "conv_shortcut"}
_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_ATTENTION_BACK = {value: key for key, value in _ATTENTION.items()}
_LINEAR_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")

_DOWN = re.compile(r"^encoder\.down\.(\d+)\.(block\.(\d+)|downsample)\.(.+)$")
_UP = re.compile(r"^decoder\.up\.(\d+)\.(block\.(\d+)|upsample)\.(.+)$")
_MID = re.compile(r"^(encoder|decoder)\.mid\.(block_(\d)|attn_1)\.(.+)$")
_DOWN_BACK = re.compile(r"^encoder\.down_blocks\.(\d+)\.(resnets\.(\d+)|downsamplers\.0)\.(.+)$")
_UP_BACK = re.compile(r"^decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.+)$")
_MID_BACK = re.compile(r"^(encoder|decoder)\.mid_block\.(resnets\.(\d)|attentions\.0)\.(.+)$")


def vae_block_count(keys: Mapping[str, object] | list[str], ldm: bool) -> int:
    """Number of decoder up blocks named in ``keys`` (LDM ``decoder.up.N`` or diffusers ``decoder.up_blocks.N``)."""
    pattern = re.compile(r"^decoder\.up\.(\d+)\." if ldm else r"^decoder\.up_blocks\.(\d+)\.")
    indices = {int(match.group(1)) for key in keys if (match := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def _rename_leaf(rest: str, table: Mapping[str, str]) -> str:
    head, _, leaf = rest.rpartition(".")
    return f"{table.get(head, head)}.{leaf}" if head else rest


def _ldm_vae_name(key: str, blocks: int) -> str:
    if match := _DOWN.match(key):
        block, _, resnet, rest = match.groups()
        if resnet is None:
            return f"encoder.down_blocks.{block}.downsamplers.0.{rest}"
        return f"encoder.down_blocks.{block}.resnets.{resnet}.{_rename_leaf(rest, _RESNET)}"
    if match := _UP.match(key):
        block, _, resnet, rest = match.groups()
        up = blocks - 1 - int(block)
        if resnet is None:
            return f"decoder.up_blocks.{up}.upsamplers.0.{rest}"
        return f"decoder.up_blocks.{up}.resnets.{resnet}.{_rename_leaf(rest, _RESNET)}"
    if match := _MID.match(key):
        part, _, index, rest = match.groups()
        if index is None:
            return f"{part}.mid_block.attentions.0.{_rename_leaf(rest, _ATTENTION)}"
        return f"{part}.mid_block.resnets.{int(index) - 1}.{_rename_leaf(rest, _RESNET)}"
    return key.replace("encoder.norm_out.", "encoder.conv_norm_out.").replace(
        "decoder.norm_out.", "decoder.conv_norm_out."
    )


def ldm_vae_to_diffusers(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename LDM VAE tensors (no prefix) to diffusers names; 1x1-conv attention weights become linear (views)."""
    blocks = vae_block_count(list(tensors), ldm=True)
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        name = _ldm_vae_name(key, blocks)
        if ".mid_block.attentions.0." in name and name.rsplit(".", 1)[0].endswith(_LINEAR_ATTENTION):
            tensor = tensor.reshape(tensor.shape[0], -1) if tensor.ndim > 2 else tensor
        renamed[name] = tensor
    return renamed


def ldm_vae_key_names(keys: list[str]) -> dict[str, str]:
    """``{LDM key: diffusers key}`` for key names alone (config inference reads shapes through it)."""
    blocks = vae_block_count(keys, ldm=True)
    return {key: _ldm_vae_name(key, blocks) for key in keys}


def _diffusers_vae_name(key: str, blocks: int) -> str:
    if match := _DOWN_BACK.match(key):
        block, _, resnet, rest = match.groups()
        if resnet is None:
            return f"encoder.down.{block}.downsample.{rest}"
        return f"encoder.down.{block}.block.{resnet}.{_rename_leaf(rest, {'conv_shortcut': 'nin_shortcut'})}"
    if match := _UP_BACK.match(key):
        block, _, resnet, rest = match.groups()
        up = blocks - 1 - int(block)
        if resnet is None:
            return f"decoder.up.{up}.upsample.{rest}"
        return f"decoder.up.{up}.block.{resnet}.{_rename_leaf(rest, {'conv_shortcut': 'nin_shortcut'})}"
    if match := _MID_BACK.match(key):
        part, _, index, rest = match.groups()
        if index is None:
            return f"{part}.mid.attn_1.{_rename_leaf(rest, _ATTENTION_BACK)}"
        return f"{part}.mid.block_{int(index) + 1}.{_rename_leaf(rest, {'conv_shortcut': 'nin_shortcut'})}"
    return key.replace("encoder.conv_norm_out.", "encoder.norm_out.").replace(
        "decoder.conv_norm_out.", "decoder.norm_out."
    )


def diffusers_vae_to_ldm(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename diffusers VAE tensors to LDM names; linear attention weights become 1x1 convolutions (as in
    the original files)."""
    blocks = vae_block_count(list(tensors), ldm=False)
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        name = _diffusers_vae_name(key, blocks)
        if ".mid.attn_1." in name and name.endswith((".q.weight", ".k.weight", ".v.weight", ".proj_out.weight")):
            tensor = tensor.reshape(*tensor.shape, 1, 1)
        renamed[name] = tensor
    return renamed


def strip_text_model(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIP-L tensors without the optional ``text_model.`` prefix (the names our text-encoder map reads)."""
    return {key.removeprefix("text_model."): value for key, value in tensors.items()}


_OPEN_CLIP_LAYER = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_OPEN_CLIP_LEAVES = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_OPEN_CLIP_TOP = {
    "token_embedding.weight": "embeddings.token_embedding.weight",
    "positional_embedding": "embeddings.position_embedding.weight",
    "ln_final.weight": "final_layer_norm.weight",
    "ln_final.bias": "final_layer_norm.bias",
}


def open_clip_to_transformers(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenCLIP text-tower tensors (no prefix) -> transformers names without ``text_model.``.

    ``attn.in_proj_weight``/``_bias`` are split into ``q_proj``, ``k_proj``, ``v_proj`` (views of the
    stacked tensor); ``text_projection`` (``[width, projection]``) is transposed into a linear weight.
    Keys it does not know are kept as they are, for the loader to report.
    """
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        if key in _OPEN_CLIP_TOP:
            renamed[_OPEN_CLIP_TOP[key]] = tensor
        elif key == "text_projection":
            renamed["text_projection.weight"] = tensor.t().contiguous()
        elif match := _OPEN_CLIP_LAYER.match(key):
            index, rest = match.groups()
            prefix = f"encoder.layers.{index}"
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                leaf = "weight" if rest.endswith("weight") else "bias"
                for name, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0), strict=True):
                    renamed[f"{prefix}.self_attn.{name}.{leaf}"] = part
            else:
                head, _, leaf = rest.rpartition(".")
                renamed[f"{prefix}.{_OPEN_CLIP_LEAVES.get(head, head)}.{leaf}"] = tensor
        else:
            renamed[key] = tensor
    return renamed


def transformers_to_open_clip(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`open_clip_to_transformers` (q, k, v stacked into ``in_proj``; projection transposed)."""
    top = {value: key for key, value in _OPEN_CLIP_TOP.items()}
    leaves = {value: key for key, value in _OPEN_CLIP_LEAVES.items()}
    layer = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
    renamed: dict[str, torch.Tensor] = {}
    stacked: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name = key.removeprefix("text_model.")
        if name in top:
            renamed[top[name]] = tensor
        elif name == "text_projection.weight":
            renamed["text_projection"] = tensor.t().contiguous()
        elif match := layer.match(name):
            index, rest = match.groups()
            head, _, leaf = rest.rpartition(".")
            if head in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                target = f"transformer.resblocks.{index}.attn.in_proj_{leaf}"
                stacked.setdefault(target, {})[head[-6]] = tensor
            else:
                renamed[f"transformer.resblocks.{index}.{leaves.get(head, head)}.{leaf}"] = tensor
        else:
            raise KeyError(f"no OpenCLIP name for {key!r}")
    for target, parts in stacked.items():
        renamed[target] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return renamed
