"""UNet configuration: the fields of a diffusers ``UNet2DConditionModel`` ``config.json``, validated and normalised.

Only the values our UNets implement are accepted; anything else raises :class:`UnsupportedConfigError`
naming the field and the value, instead of silently building a different network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refiners_core.config import read_config
from refiners_core.errors import ConfigError

__all__ = ["UNetConfig", "UnsupportedConfigError", "read_config"]

DOWN_BLOCK_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCK_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")

# field -> accepted values, for fields that only switch features we do not implement
_FIXED: dict[str, tuple[Any, ...]] = {
    "act_fn": ("silu",),
    "center_input_sample": (False,),
    "class_embed_type": (None,),
    "class_embeddings_concat": (False,),
    "conv_in_kernel": (3,),
    "conv_out_kernel": (3,),
    "cross_attention_norm": (None,),
    "downsample_padding": (1,),
    "dual_cross_attention": (False,),
    "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,),
    "mid_block_only_cross_attention": (None, False),
    "mid_block_scale_factor": (1, 1.0),
    "mid_block_type": ("UNetMidBlock2DCrossAttn",),
    "num_class_embeds": (None,),
    "only_cross_attention": (False,),
    "resnet_out_scale_factor": (1, 1.0),
    "resnet_skip_time_act": (False,),
    "resnet_time_scale_shift": ("default",),
    "reverse_transformer_layers_per_block": (None,),
    "time_cond_proj_dim": (None,),
    "time_embedding_act_fn": (None,),
    "time_embedding_type": ("positional",),
    "timestep_post_act": (None,),
    "attention_type": ("default",),
    "addition_embed_type": (None, "text_time"),
}

# fields read by the builder (validated below) or without effect on inference
_KNOWN = {
    "block_out_channels",
    "layers_per_block",
    "down_block_types",
    "up_block_types",
    "cross_attention_dim",
    "attention_head_dim",
    "num_attention_heads",
    "norm_num_groups",
    "norm_eps",
    "use_linear_projection",
    "transformer_layers_per_block",
    "in_channels",
    "out_channels",
    "flip_sin_to_cos",
    "freq_shift",
    "time_embedding_dim",
    "addition_time_embed_dim",
    "projection_class_embeddings_input_dim",
    # no effect on an inference graph in float32 / eval mode
    "sample_size",
    "dropout",
    "upcast_attention",
    "addition_embed_type_num_heads",
}


class UnsupportedConfigError(ConfigError):
    """A UNet ``config.json`` value that this plugin does not implement (the message names the field)."""


def _per_block(name: str, value: Any, count: int, kind: type | tuple[type, ...]) -> tuple[Any, ...]:
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != count:
            raise UnsupportedConfigError(f"config field {name!r} has {len(value)} entries, expected {count}: {value!r}")
        values = tuple(value)
    else:
        values = (value,) * count
    for item in values:
        if not isinstance(item, kind) or isinstance(item, bool):
            raise UnsupportedConfigError(f"config field {name!r} has an unsupported value {value!r}")
    return values


@dataclass(frozen=True)
class UNetConfig:
    """A validated diffusers UNet configuration, with per-block fields expanded to tuples.

    Build it with :meth:`from_dict` (a ``config.json`` mapping) or :meth:`from_file`. ``raw`` keeps
    the original mapping so that :meth:`to_dict` writes back the same ``config.json``.
    """

    block_out_channels: tuple[int, ...]
    down_block_types: tuple[str, ...]
    up_block_types: tuple[str, ...]
    layers_per_block: tuple[int, ...]
    transformer_layers_per_block: tuple[int, ...]
    num_attention_heads: tuple[int, ...]
    cross_attention_dim: tuple[int, ...]
    in_channels: int = 4
    out_channels: int = 4
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    use_linear_projection: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0
    time_embedding_dim: int = 1280
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None
    projection_class_embeddings_input_dim: int | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> UNetConfig:
        """Validate a diffusers ``UNet2DConditionModel`` config mapping.

        Raises:
            UnsupportedConfigError: naming the first field whose value is not implemented.
        """
        for name, accepted in _FIXED.items():
            if name in config and config[name] not in accepted:
                raise UnsupportedConfigError(
                    f"unsupported UNet config value {name}={config[name]!r} (supported: "
                    + ", ".join(repr(value) for value in accepted)
                    + ")"
                )
        unknown = sorted(
            name
            for name, value in config.items()
            if not name.startswith("_") and name not in _KNOWN and name not in _FIXED and value not in (None, False)
        )
        if unknown:
            raise UnsupportedConfigError(
                "unsupported UNet config fields: " + ", ".join(f"{name}={config[name]!r}" for name in unknown)
            )
        channels = tuple(config.get("block_out_channels", (320, 640, 1280, 1280)))
        count = len(channels)
        down_types = tuple(config.get("down_block_types", ()))
        up_types = tuple(config.get("up_block_types", ()))
        if len(down_types) != count or len(up_types) != count:
            raise UnsupportedConfigError(
                f"config fields down_block_types ({len(down_types)}) and up_block_types ({len(up_types)}) "
                f"must have one entry per block_out_channels ({count})"
            )
        for name, types, accepted in (
            ("down_block_types", down_types, DOWN_BLOCK_TYPES),
            ("up_block_types", up_types, UP_BLOCK_TYPES),
        ):
            for block_type in types:
                if block_type not in accepted:
                    raise UnsupportedConfigError(
                        f"unsupported UNet config value in {name}: {block_type!r} (supported: {', '.join(accepted)})"
                    )
        heads_value = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
        layers_value = config.get("transformer_layers_per_block", 1)
        if isinstance(layers_value, Sequence) and any(not isinstance(item, int) for item in layers_value):
            raise UnsupportedConfigError(
                f"unsupported UNet config value transformer_layers_per_block={layers_value!r} (nested lists)"
            )
        groups = config.get("norm_num_groups", 32)
        if not isinstance(groups, int):
            raise UnsupportedConfigError(f"unsupported UNet config value norm_num_groups={groups!r}")
        addition = config.get("addition_embed_type")
        time_dim = config.get("time_embedding_dim") or channels[0] * 4
        if addition == "text_time":
            for name in ("addition_time_embed_dim", "projection_class_embeddings_input_dim"):
                if not isinstance(config.get(name), int):
                    raise UnsupportedConfigError(f"addition_embed_type='text_time' needs an integer {name}")
        return cls(
            block_out_channels=channels,
            down_block_types=down_types,
            up_block_types=up_types,
            layers_per_block=_per_block("layers_per_block", config.get("layers_per_block", 2), count, int),
            transformer_layers_per_block=_per_block("transformer_layers_per_block", layers_value, count, int),
            num_attention_heads=_per_block("attention_head_dim", heads_value, count, int),
            cross_attention_dim=_per_block("cross_attention_dim", config.get("cross_attention_dim", 1280), count, int),
            in_channels=int(config.get("in_channels", 4)),
            out_channels=int(config.get("out_channels", 4)),
            norm_num_groups=groups,
            norm_eps=float(config.get("norm_eps", 1e-5)),
            use_linear_projection=bool(config.get("use_linear_projection", False)),
            flip_sin_to_cos=bool(config.get("flip_sin_to_cos", True)),
            freq_shift=float(config.get("freq_shift", 0)),
            time_embedding_dim=int(time_dim),
            addition_embed_type=addition,
            addition_time_embed_dim=config.get("addition_time_embed_dim"),
            projection_class_embeddings_input_dim=config.get("projection_class_embeddings_input_dim"),
            raw=dict(config),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> UNetConfig:
        """Read and validate a ``config.json`` file (or the ``config.json`` inside a folder)."""
        return cls.from_dict(read_config(path, "UNet config"))

    @property
    def topology(self) -> str:
        """``"sdxl"`` for a ``text_time`` (SDXL-style) UNet, else ``"sd15"``."""
        return "sdxl" if self.addition_embed_type == "text_time" else "sd15"

    @property
    def num_blocks(self) -> int:
        """Number of down (and up) blocks."""
        return len(self.block_out_channels)

    def has_attention(self, block: int, up: bool = False) -> bool:
        """Whether down block ``block`` (or up block ``block`` when ``up``) holds cross-attention."""
        types = self.up_block_types if up else self.down_block_types
        return types[block].startswith("CrossAttn")

    def to_dict(self) -> dict[str, Any]:
        """The diffusers ``config.json`` mapping (the original one when built from a mapping)."""
        if self.raw:
            return dict(self.raw)
        config: dict[str, Any] = {
            "_class_name": "UNet2DConditionModel",
            "block_out_channels": list(self.block_out_channels),
            "down_block_types": list(self.down_block_types),
            "up_block_types": list(self.up_block_types),
            "layers_per_block": list(self.layers_per_block),
            "transformer_layers_per_block": list(self.transformer_layers_per_block),
            "attention_head_dim": list(self.num_attention_heads),
            "cross_attention_dim": list(self.cross_attention_dim),
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "norm_num_groups": self.norm_num_groups,
            "norm_eps": self.norm_eps,
            "use_linear_projection": self.use_linear_projection,
            "flip_sin_to_cos": self.flip_sin_to_cos,
            "freq_shift": self.freq_shift,
            "time_embedding_dim": self.time_embedding_dim,
        }
        if self.addition_embed_type is not None:
            config["addition_embed_type"] = self.addition_embed_type
            config["addition_time_embed_dim"] = self.addition_time_embed_dim
            config["projection_class_embeddings_input_dim"] = self.projection_class_embeddings_input_dim
        return config
