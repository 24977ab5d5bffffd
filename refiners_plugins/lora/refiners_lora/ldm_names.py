"""The LDM (original Stable Diffusion) names of diffusers UNet modules, used by kohya SDXL files.

Computed from the set of diffusers module names alone (layers per block, which up blocks have
attentions), so any UNet of the SD family is covered without its config.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_RESNET_INNER = {
    "conv1": "in_layers.2",
    "norm1": "in_layers.0",
    "conv2": "out_layers.3",
    "norm2": "out_layers.0",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_TOP_LEVEL = {
    "conv_in": "input_blocks.0.0",
    "conv_out": "out.2",
    "conv_norm_out": "out.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}
_DOWN = re.compile(r"^down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$")
_DOWNSAMPLE = re.compile(r"^down_blocks\.(\d+)\.downsamplers\.0\.conv$")
_MID = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")
_UP = re.compile(r"^up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$")
_UPSAMPLE = re.compile(r"^up_blocks\.(\d+)\.upsamplers\.0\.conv$")


def _inner(kind: str, rest: str) -> str | None:
    if kind == "attentions":
        return rest
    return _RESNET_INNER.get(rest)


def ldm_names(names: Iterable[str]) -> dict[str, str]:
    """Map each diffusers UNet module name that has an LDM counterpart to its LDM name.

    ``down_blocks.1.attentions.0.proj_in`` -> ``input_blocks.4.1.proj_in`` (2 layers per block),
    ``down_blocks.0.resnets.0.conv1`` -> ``input_blocks.1.0.in_layers.2``, and so on.
    """
    names = list(names)
    resnets = {int(m.group(1)) for name in names if (m := re.match(r"^down_blocks\.0\.resnets\.(\d+)\.", name))}
    if not resnets:
        return {}
    layers = max(resnets) + 1
    up_with_attention = {int(m.group(1)) for name in names if (m := re.match(r"^up_blocks\.(\d+)\.attentions\.", name))}
    result: dict[str, str] = {}
    for name in names:
        ldm: str | None = None
        if name in _TOP_LEVEL:
            ldm = _TOP_LEVEL[name]
        elif match := _DOWN.match(name):
            block, kind, index, rest = match.groups()
            inner = _inner(kind, rest)
            position = 1 + int(block) * (layers + 1) + int(index)
            ldm = inner and f"input_blocks.{position}.{0 if kind == 'resnets' else 1}.{inner}"
        elif match := _DOWNSAMPLE.match(name):
            ldm = f"input_blocks.{(int(match.group(1)) + 1) * (layers + 1)}.0.op"
        elif match := _MID.match(name):
            kind, index, rest = match.groups()
            inner = _inner(kind, rest)
            position = 1 if kind == "attentions" else 2 * int(index)
            ldm = inner and f"middle_block.{position}.{inner}"
        elif match := _UP.match(name):
            block, kind, index, rest = match.groups()
            inner = _inner(kind, rest)
            position = int(block) * (layers + 1) + int(index)
            ldm = inner and f"output_blocks.{position}.{0 if kind == 'resnets' else 1}.{inner}"
        elif match := _UPSAMPLE.match(name):
            block = int(match.group(1))
            slot = 2 if block in up_with_attention else 1
            ldm = f"output_blocks.{block * (layers + 1) + layers}.{slot}.conv"
        if ldm:
            result[name] = ldm
    return result
