"""refiners-registry: a catalog of adapters pinned to Hugging Face Hub commits, downloaded and sha256-checked.

``from refiners_registry import Registry`` gives the Python API; ``refiners adapters ...`` the CLI.
Importing this package imports neither torch nor huggingface_hub.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from refiners_core.lazy import lazy_exports
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

__version__ = "0.1.0"

# name -> module holding it; imported on first access (PEP 562), so that importing the plugin module
# (``refiners plugins``, every ``refiners`` start) does not load the download and registry code.
_LAZY: dict[str, str] = {
    "CatalogEntry": "refiners_registry.catalog",
    "CatalogIssue": "refiners_registry.catalog",
    "SourceFile": "refiners_registry.catalog",
    "SourceSpec": "refiners_registry.catalog",
    "FileCheck": "refiners_registry.download",
    "load_adapter": "refiners_registry.loading",
    "CatalogWarning": "refiners_registry.registry",
    "Registry": "refiners_registry.registry",
    "VerifyResult": "refiners_registry.registry",
}

__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)

if TYPE_CHECKING:  # static analysers see every name eagerly
    from refiners_registry.catalog import CatalogEntry, CatalogIssue, SourceFile, SourceSpec
    from refiners_registry.download import FileCheck
    from refiners_registry.loading import load_adapter
    from refiners_registry.registry import CatalogWarning, Registry, VerifyResult

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
