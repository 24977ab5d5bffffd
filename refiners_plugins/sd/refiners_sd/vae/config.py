"""The hyper-parameters of a VAE, read from a diffusers ``AutoencoderKL`` ``config.json``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refiners_core.config import config_from_dict, read_config
from refiners_core.errors import ConfigError

__all__ = ["SD15_SCALING_FACTOR", "SDXL_SCALING_FACTOR", "AutoencoderConfig"]

SD15_SCALING_FACTOR = 0.18215
SDXL_SCALING_FACTOR = 0.13025

SUPPORTED_DOWN_BLOCKS = ("DownEncoderBlock2D",)
SUPPORTED_UP_BLOCKS = ("UpDecoderBlock2D",)


@dataclass(frozen=True)
class AutoencoderConfig:
    """Sizes of a KL autoencoder: the fields of diffusers' ``AutoencoderKL`` config that shape the model.

    ``shift_factor`` (``None`` for SD 1.5 and SDXL) is subtracted before scaling on encode and added back
    on decode. ``force_upcast`` is not used: load in float32 (or bfloat16) when fp16 overflows.
    """

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = SD15_SCALING_FACTOR
    shift_factor: float | None = None
    mid_block_add_attention: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], source: str = "VAE config") -> AutoencoderConfig:
        """Read a diffusers config mapping; unsupported block types or activations, and missing or mistyped
        fields, raise :class:`~refiners_core.ConfigError` naming them."""
        for key, supported in (("down_block_types", SUPPORTED_DOWN_BLOCKS), ("up_block_types", SUPPORTED_UP_BLOCKS)):
            unsupported = sorted(set(config.get(key, ())) - set(supported))
            if unsupported:
                raise ConfigError(
                    f"{source}: unsupported VAE {key}: {', '.join(unsupported)} (supported: {', '.join(supported)})"
                )
        if config.get("act_fn", "silu") != "silu":
            raise ConfigError(f"{source}: unsupported VAE act_fn {config['act_fn']!r} (supported: 'silu')")
        return config_from_dict(cls, config, source=source)

    @classmethod
    def from_file(cls, path: str | Path) -> AutoencoderConfig:
        """Read a ``config.json`` file, or the one in a folder (see :meth:`from_dict`)."""
        return cls.from_dict(read_config(path, "VAE config"), source=str(path))
