"""The diffusers pipeline folder layout: which components a folder holds and which model they make."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from refiners_core import WeightsError
from refiners_core.config import read_config

__all__ = ["PipelineLayout", "Topology", "read_layout"]

Topology = Literal["sd15", "sdxl"]

SD15_PARTS = ("unet", "text_encoder", "tokenizer", "vae")
SDXL_PARTS = ("unet", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae")
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"


@dataclass(frozen=True)
class PipelineLayout:
    """A checked diffusers pipeline folder.

    Attributes:
        topology: ``sd15`` (one text encoder) or ``sdxl`` (two, with ``text_time`` conditioning).
        scheduler_config: ``scheduler/scheduler_config.json`` (empty when absent: solver defaults apply).
        pipeline_config: ``model_index.json`` (empty when absent).
    """

    root: Path
    topology: Topology
    scheduler_config: dict[str, Any]
    pipeline_config: dict[str, Any]

    def part(self, name: str) -> Path:
        """The folder of component ``name`` (``unet``, ``vae``, ``text_encoder``...)."""
        return self.root / name

    @property
    def force_zeros_for_empty_prompt(self) -> bool:
        """SDXL: an absent negative prompt means zero embeddings (``model_index.json``; diffusers' default True)."""
        return bool(self.pipeline_config.get("force_zeros_for_empty_prompt", True))


def read_layout(path: str | Path) -> PipelineLayout:
    """Check that ``path`` is a diffusers SD1.x or SDXL pipeline folder and tell which.

    Raises:
        WeightsError: the folder or one of its component folders is missing, naming what is absent.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise WeightsError(f"{root} is not a folder (expected a diffusers pipeline folder)")
    unet_config = root / "unet" / "config.json"
    if not unet_config.is_file():
        raise WeightsError(f"{root} is not a diffusers pipeline folder: no unet/config.json")
    sdxl = (root / "text_encoder_2").is_dir() or read_config(unet_config, "UNet config").get(
        "addition_embed_type"
    ) == "text_time"
    topology: Topology = "sdxl" if sdxl else "sd15"
    missing = [part for part in (SDXL_PARTS if sdxl else SD15_PARTS) if not (root / part).is_dir()]
    if missing:
        raise WeightsError(f"{root} lacks the {topology} component folder(s): {', '.join(missing)}")
    scheduler = root / SCHEDULER_CONFIG
    index = root / "model_index.json"
    return PipelineLayout(
        root=root,
        topology=topology,
        scheduler_config=read_config(scheduler, "scheduler config") if scheduler.is_file() else {},
        pipeline_config=read_config(index, "pipeline index") if index.is_file() else {},
    )
