"""refiners-lora: LoRA-family adapters (LoRA, LoCon, LoHa, LoKr, DoRA, full diff, (IA)^3, OFT, GLoRA)
for refiners models.

Names are imported on first access (PEP 562) so that ``refiners_lora.plugin`` stays torch-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from refiners_core.lazy import lazy_exports

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "Lora": "refiners_lora.layers",
    "LinearLora": "refiners_lora.layers",
    "Conv2dLora": "refiners_lora.layers",
    "LoraAdapter": "refiners_lora.adapter",
    "LoraManager": "refiners_lora.manager",
    "LoraError": "refiners_lora.errors",
    "LoraWeights": "refiners_lora.formats.common",
    "ParsedLora": "refiners_lora.formats.common",
    "parse_lora": "refiners_lora.formats",
    "detect_format": "refiners_lora.formats",
    "load_lora": "refiners_lora.loader",
    "TuckerConv2dLora": "refiners_lora.layers",
    "WeightDelta": "refiners_lora.deltas.base",
    "LohaDelta": "refiners_lora.deltas.loha",
    "LokrDelta": "refiners_lora.deltas.lokr",
    "DoraDelta": "refiners_lora.deltas.dora",
    "FullDelta": "refiners_lora.deltas.full",
    "Ia3Delta": "refiners_lora.deltas.ia3",
    "OftDelta": "refiners_lora.deltas.oft",
    "PeftOftDelta": "refiners_lora.deltas.peft_oft",
    "PeftBoftDelta": "refiners_lora.deltas.peft_boft",
    "BoftDelta": "refiners_lora.deltas.boft",
    "NormDelta": "refiners_lora.deltas.norm",
    "GloraDelta": "refiners_lora.deltas.glora",
    "build_delta": "refiners_lora.deltas.build",
    "DeltaWeights": "refiners_lora.formats.common",
    "PaddedLora": "refiners_lora.hotswap",
    "LoraMetadata": "refiners_lora.metadata",
    "read_lora_metadata": "refiners_lora.metadata",
    "LoraSummary": "refiners_lora.inspect",
    "inspect_lora": "refiners_lora.inspect",
}

__all__ = ["__version__", *_LAZY]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)


if TYPE_CHECKING:
    from refiners_lora.adapter import LoraAdapter
    from refiners_lora.deltas.base import WeightDelta
    from refiners_lora.deltas.boft import BoftDelta
    from refiners_lora.deltas.build import build_delta
    from refiners_lora.deltas.dora import DoraDelta
    from refiners_lora.deltas.full import FullDelta
    from refiners_lora.deltas.glora import GloraDelta
    from refiners_lora.deltas.ia3 import Ia3Delta
    from refiners_lora.deltas.loha import LohaDelta
    from refiners_lora.deltas.lokr import LokrDelta
    from refiners_lora.deltas.norm import NormDelta
    from refiners_lora.deltas.oft import OftDelta
    from refiners_lora.deltas.peft_boft import PeftBoftDelta
    from refiners_lora.deltas.peft_oft import PeftOftDelta
    from refiners_lora.errors import LoraError
    from refiners_lora.formats import detect_format, parse_lora
    from refiners_lora.formats.common import DeltaWeights, LoraWeights, ParsedLora
    from refiners_lora.hotswap import PaddedLora
    from refiners_lora.inspect import LoraSummary, inspect_lora
    from refiners_lora.layers import Conv2dLora, LinearLora, Lora, TuckerConv2dLora
    from refiners_lora.loader import load_lora
    from refiners_lora.manager import LoraManager
    from refiners_lora.metadata import LoraMetadata, read_lora_metadata
