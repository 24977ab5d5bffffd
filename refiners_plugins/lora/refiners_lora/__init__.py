"""refiners-lora: LoRA and LoCon adapters for refiners models.

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
}

__all__ = ["__version__", *_LAZY]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)


if TYPE_CHECKING:
    from refiners_lora.adapter import LoraAdapter
    from refiners_lora.errors import LoraError
    from refiners_lora.formats import detect_format, parse_lora
    from refiners_lora.formats.common import LoraWeights, ParsedLora
    from refiners_lora.layers import Conv2dLora, LinearLora, Lora
    from refiners_lora.loader import load_lora
    from refiners_lora.manager import LoraManager
