"""refiners-registry: a catalog of adapters pinned to Hugging Face Hub commits, downloaded and sha256-checked.

``from refiners_registry import Registry`` gives the Python API; ``refiners adapters ...`` the CLI.
Importing this package imports neither torch nor huggingface_hub.
"""

from __future__ import annotations

from refiners_registry.catalog import CatalogEntry, CatalogIssue, SourceFile, SourceSpec
from refiners_registry.download import FileCheck
from refiners_registry.errors import (
    CatalogError,
    HashMismatchError,
    LocalIOError,
    MissingPluginError,
    NetworkError,
    NotCachedError,
    PickleNotAllowedError,
    RegistryError,
    SizeExceededError,
    UnknownEntryError,
)
from refiners_registry.loading import load_adapter
from refiners_registry.registry import CatalogWarning, Registry, VerifyResult

__version__ = "0.1.0"

__all__ = [
    "CatalogEntry",
    "CatalogError",
    "CatalogIssue",
    "CatalogWarning",
    "FileCheck",
    "HashMismatchError",
    "LocalIOError",
    "MissingPluginError",
    "NetworkError",
    "NotCachedError",
    "PickleNotAllowedError",
    "Registry",
    "RegistryError",
    "SizeExceededError",
    "SourceFile",
    "SourceSpec",
    "UnknownEntryError",
    "VerifyResult",
    "__version__",
    "load_adapter",
]
