"""refiners-t2i: T2I-Adapters (full, light, SDXL) for refiners-sd UNets.

Names are imported on first access (PEP 562) so that ``refiners_t2i.plugin`` stays torch-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from refiners_core.lazy import lazy_exports

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "T2IAdapter": "refiners_t2i.adapter",
    "T2IConfig": "refiners_t2i.config",
    "ADAPTER_TYPES": "refiners_t2i.config",
    "infer_config": "refiners_t2i.config",
    "T2IEncoder": "refiners_t2i.encoder",
    "T2ILevel": "refiners_t2i.encoder",
    "T2IResnet": "refiners_t2i.encoder",
    "diffusers_module_map": "refiners_t2i.encoder",
    "T2IFeature": "refiners_t2i.injection",
    "T2IFeatureAdapter": "refiners_t2i.injection",
    "UseT2IFeature": "refiners_t2i.injection",
    "InjectionPoint": "refiners_t2i.injection",
    "injection_points": "refiners_t2i.injection",
    "detect_format": "refiners_t2i.formats",
    "read_weights": "refiners_t2i.formats",
    "tencentarc_to_diffusers": "refiners_t2i.formats",
    "load_t2i_adapter": "refiners_t2i.loader",
}

__all__ = ["__version__", *_LAZY]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)


if TYPE_CHECKING:
    from refiners_t2i.adapter import T2IAdapter
    from refiners_t2i.config import ADAPTER_TYPES, T2IConfig, infer_config
    from refiners_t2i.encoder import T2IEncoder, T2ILevel, T2IResnet, diffusers_module_map
    from refiners_t2i.formats import detect_format, read_weights, tencentarc_to_diffusers
    from refiners_t2i.injection import (
        InjectionPoint,
        T2IFeature,
        T2IFeatureAdapter,
        UseT2IFeature,
        injection_points,
    )
    from refiners_t2i.loader import load_t2i_adapter
