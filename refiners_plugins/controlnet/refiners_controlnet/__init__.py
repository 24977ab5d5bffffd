"""refiners-controlnet: ControlNet adapters for the SD1.5 and SDXL UNets of refiners-sd.

Names are imported on first access (PEP 562) so that ``refiners_controlnet.plugin`` stays torch-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from refiners_core.lazy import lazy_exports

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "ControlNet": "refiners_controlnet.model",
    "ControlNetEncoder": "refiners_controlnet.model",
    "ControlNetConfig": "refiners_controlnet.config",
    "infer_config": "refiners_controlnet.config",
    "ConditionEncoder": "refiners_controlnet.layers",
    "ControlResidual": "refiners_controlnet.layers",
    "UseCondition": "refiners_controlnet.layers",
    "read_controlnet_weights": "refiners_controlnet.formats",
    "detect_format": "refiners_controlnet.formats",
    "original_to_diffusers": "refiners_controlnet.formats",
    "load_controlnet": "refiners_controlnet.loader",
}

__all__ = ["__version__", *_LAZY]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)


if TYPE_CHECKING:
    from refiners_controlnet.config import ControlNetConfig, infer_config
    from refiners_controlnet.formats import detect_format, original_to_diffusers, read_controlnet_weights
    from refiners_controlnet.layers import ConditionEncoder, ControlResidual, UseCondition
    from refiners_controlnet.loader import load_controlnet
    from refiners_controlnet.model import ControlNet, ControlNetEncoder
