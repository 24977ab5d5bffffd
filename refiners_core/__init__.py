"""refiners-core: Chain, Context and Adapter for explicit model surgery in PyTorch.

Light names (errors, plugin markers, descriptors) import eagerly; everything that needs torch is
imported on first attribute access, so ``import refiners_core`` and the CLI's light paths stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from refiners_core.errors import (
    AdapterError,
    ChainError,
    ConfigError,
    ContextError,
    PickleRefusedError,
    PluginError,
    RefinersError,
    RegistryError,
    WeightsError,
)
from refiners_core.lazy import lazy_exports
from refiners_core.plugins.descriptors import (
    TAKES_CONDITION_IMAGE,
    TAKES_NOTHING,
    TAKES_REFERENCE_IMAGE,
    AdapterFamily,
    BaseModelFamily,
    DemoAsset,
    NameResolver,
    Resolved,
)
from refiners_core.plugins.hookspecs import hookimpl, hookspec
from refiners_core.plugins.validation import RefinersPluginWarning

__version__ = "0.1.0"

# name -> submodule holding it; imported lazily (PEP 562) because they import torch.
_LAZY: dict[str, str] = {
    # tree
    "Module": "refiners_core.module",
    "WeightedModule": "refiners_core.module",
    "get_parent": "refiners_core.module",
    "Chain": "refiners_core.chain",
    "Parallel": "refiners_core.combinators",
    "Distribute": "refiners_core.combinators",
    "Sum": "refiners_core.combinators",
    "Residual": "refiners_core.combinators",
    "Concatenate": "refiners_core.combinators",
    "Passthrough": "refiners_core.combinators",
    "Lambda": "refiners_core.combinators",
    "Return": "refiners_core.combinators",
    "Breakpoint": "refiners_core.combinators",
    # context
    "SetContext": "refiners_core.context",
    "UseContext": "refiners_core.context",
    "ContextProvider": "refiners_core.context",
    "provider_of": "refiners_core.context",
    "Contexts": "refiners_core.context",
    # adapters
    "Adapter": "refiners_core.adapter",
    "inject_adapters": "refiners_core.adapter",
    "eject_adapters": "refiners_core.adapter",
    "unwrap_adapters": "refiners_core.adapter",
    "AdapterGroup": "refiners_core.adapter_group",
    # contracts (protocols) and resolution through the hooks
    "Pipeline": "refiners_core.contracts",
    "LoadedAdapter": "refiners_core.contracts",
    "ImageAdapter": "refiners_core.contracts",
    "ImageInput": "refiners_core.contracts",
    "component_of": "refiners_core.contracts",
    "TrainablePipeline": "refiners_core.contracts",
    "TrainableAdapter": "refiners_core.contracts",
    "load_base_model": "refiners_core.plugins.resolution",
    "load_adapter": "refiners_core.plugins.resolution",
    "ResolutionError": "refiners_core.plugins.resolution",
    "image_to_tensor": "refiners_core.images",
    "write_demo_condition_image": "refiners_core.images",
    "write_demo_reference_image": "refiners_core.images",
    # layers
    "Linear": "refiners_core.layers.linear",
    "Conv2d": "refiners_core.layers.conv",
    "ConvTranspose2d": "refiners_core.layers.conv",
    "LayerNorm": "refiners_core.layers.norm",
    "GroupNorm": "refiners_core.layers.norm",
    "Embedding": "refiners_core.layers.embedding",
    "Parameter": "refiners_core.layers.embedding",
    "ScaledDotProductAttention": "refiners_core.layers.attention",
    "Attention": "refiners_core.layers.attention",
    "SelfAttention": "refiners_core.layers.attention",
    "ReLU": "refiners_core.layers.activations",
    "SiLU": "refiners_core.layers.activations",
    "GeLU": "refiners_core.layers.activations",
    "ApproximateGeLU": "refiners_core.layers.activations",
    "Sigmoid": "refiners_core.layers.activations",
    "Tanh": "refiners_core.layers.activations",
    "GLU": "refiners_core.layers.activations",
    "Softmax": "refiners_core.layers.activations",
    "Identity": "refiners_core.layers.basics",
    "Multiply": "refiners_core.layers.basics",
    "Cos": "refiners_core.layers.basics",
    "Sin": "refiners_core.layers.basics",
    "Reshape": "refiners_core.layers.basics",
    "Flatten": "refiners_core.layers.basics",
    "Unflatten": "refiners_core.layers.basics",
    "Transpose": "refiners_core.layers.basics",
    "SpatialSize": "refiners_core.layers.basics",
    "Contiguous": "refiners_core.layers.basics",
    "Permute": "refiners_core.layers.basics",
    "Squeeze": "refiners_core.layers.basics",
    "Unsqueeze": "refiners_core.layers.basics",
    "Slicing": "refiners_core.layers.basics",
    "Chunk": "refiners_core.layers.basics",
    "Cat": "refiners_core.layers.basics",
    "Converter": "refiners_core.layers.basics",
    "Dropout": "refiners_core.layers.basics",
    "Interpolate": "refiners_core.layers.sampling",
    "Upsample": "refiners_core.layers.sampling",
    "Downsample": "refiners_core.layers.sampling",
    # weights
    "load_state_dict": "refiners_core.weights",
    "save_state_dict": "refiners_core.weights",
    "load_tensors": "refiners_core.weights",
    "save_model_folder": "refiners_core.weights",
    "cast_state_dict": "refiners_core.weights",
    "load_weight_files": "refiners_core.weights",
    "find_weight_files": "refiners_core.model_folder",
    "is_pickle_name": "refiners_core.model_folder",
    "PICKLE_SUFFIXES": "refiners_core.model_folder",
    "read_config": "refiners_core.config",
    "config_from_dict": "refiners_core.config",
    "resolve_config": "refiners_core.config",
    "load_by_module_map": "refiners_core.module_map",
    "convert_by_module_map": "refiners_core.module_map",
    "state_dict_by_module_map": "refiners_core.module_map",
}

__all__ = [
    "AdapterError",
    "TAKES_CONDITION_IMAGE",
    "TAKES_NOTHING",
    "TAKES_REFERENCE_IMAGE",
    "AdapterFamily",
    "BaseModelFamily",
    "ChainError",
    "ConfigError",
    "DemoAsset",
    "NameResolver",
    "Resolved",
    "ContextError",
    "PickleRefusedError",
    "PluginError",
    "RefinersError",
    "RefinersPluginWarning",
    "RegistryError",
    "WeightsError",
    "__version__",
    "hookimpl",
    "hookspec",
    *_LAZY,
]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)


if TYPE_CHECKING:  # static analysers see every name eagerly
    from refiners_core.adapter import Adapter, eject_adapters, inject_adapters, unwrap_adapters
    from refiners_core.adapter_group import AdapterGroup
    from refiners_core.chain import Chain
    from refiners_core.combinators import (
        Breakpoint,
        Concatenate,
        Distribute,
        Lambda,
        Parallel,
        Passthrough,
        Residual,
        Return,
        Sum,
    )
    from refiners_core.config import config_from_dict, read_config, resolve_config
    from refiners_core.context import ContextProvider, Contexts, SetContext, UseContext, provider_of
    from refiners_core.contracts import (
        ImageAdapter,
        ImageInput,
        LoadedAdapter,
        Pipeline,
        TrainableAdapter,
        TrainablePipeline,
        component_of,
    )
    from refiners_core.images import image_to_tensor, write_demo_condition_image, write_demo_reference_image
    from refiners_core.layers.activations import GLU, ApproximateGeLU, GeLU, ReLU, Sigmoid, SiLU, Softmax, Tanh
    from refiners_core.layers.attention import Attention, ScaledDotProductAttention, SelfAttention
    from refiners_core.layers.basics import (
        Cat,
        Chunk,
        Contiguous,
        Converter,
        Cos,
        Dropout,
        Flatten,
        Identity,
        Multiply,
        Permute,
        Reshape,
        Sin,
        Slicing,
        SpatialSize,
        Squeeze,
        Transpose,
        Unflatten,
        Unsqueeze,
    )
    from refiners_core.layers.conv import Conv2d, ConvTranspose2d
    from refiners_core.layers.embedding import Embedding, Parameter
    from refiners_core.layers.linear import Linear
    from refiners_core.layers.norm import GroupNorm, LayerNorm
    from refiners_core.layers.sampling import Downsample, Interpolate, Upsample
    from refiners_core.model_folder import PICKLE_SUFFIXES, find_weight_files, is_pickle_name
    from refiners_core.module import Module, WeightedModule, get_parent
    from refiners_core.module_map import convert_by_module_map, load_by_module_map, state_dict_by_module_map
    from refiners_core.plugins.resolution import ResolutionError, load_adapter, load_base_model
    from refiners_core.weights import (
        cast_state_dict,
        load_state_dict,
        load_tensors,
        load_weight_files,
        save_model_folder,
        save_state_dict,
    )
