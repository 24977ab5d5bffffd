"""The exception hierarchy of the ecosystem. Importing this module never imports torch."""

from __future__ import annotations


class RefinersError(Exception):
    """Base class of every error raised on purpose by refiners-core and its plugins."""


class RefinersWarning(UserWarning):
    """Base class of the warnings of refiners-core and its plugins; the CLI prints each as one line."""


class ContextError(RefinersError, KeyError):
    """A context or a key inside a context was read before being set."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class ChainError(RefinersError):
    """A structural operation on a Chain was invalid (unknown child, bad index, bad path)."""


class AdapterError(RefinersError):
    """An adapter could not be injected or ejected."""


class WeightsError(RefinersError):
    """A weight file could not be read, or its keys or shapes do not fit the model."""


class ConfigError(WeightsError, ValueError):
    """A model config (``config.json`` or a mapping) could not be read, or a field is unknown, missing or mistyped.

    A :class:`WeightsError` (a model folder is unusable) and a ``ValueError`` (a bad value), so handlers of either
    keep working.
    """


class PickleRefusedError(WeightsError):
    """A pickled weight file was given without an explicit opt-in."""


class PluginError(RefinersError):
    """A plugin failed to load, declared an incompatible requirement, or misused a hook."""


class RegistryError(RefinersError):
    """The adapter registry could not resolve, download or verify an entry."""
