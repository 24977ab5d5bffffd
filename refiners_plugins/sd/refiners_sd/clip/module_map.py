"""Loading by module map lives in the core (:mod:`refiners_core.module_map`); re-exported for the CLIP modules."""

from refiners_core.module_map import convert_by_module_map, load_by_module_map

__all__ = ["convert_by_module_map", "load_by_module_map"]
