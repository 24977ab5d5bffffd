"""Registry errors. Each kind carries the exit code the CLI returns for it (see the README)."""

from __future__ import annotations

from collections.abc import Sequence

from refiners_core.errors import PickleRefusedError, RegistryError

__all__ = [
    "CatalogError",
    "HashMismatchError",
    "LocalIOError",
    "MissingPluginError",
    "NetworkError",
    "NotCachedError",
    "PickleNotAllowedError",
    "RegistryError",
    "SizeExceededError",
    "UnknownEntryError",
    "exit_code_for",
]


class CatalogError(RegistryError):
    """A catalog file or entry is invalid."""

    exit_code = 1


class UnknownEntryError(RegistryError, LookupError):
    """No catalog entry has this name."""

    exit_code = 3

    def __init__(self, name: str, suggestions: Sequence[str] = ()) -> None:
        self.name = name
        self.suggestions = tuple(suggestions)
        hint = f"; did you mean {', '.join(repr(s) for s in self.suggestions)}?" if self.suggestions else ""
        super().__init__(f"unknown adapter {name!r}{hint}")


class MissingPluginError(RegistryError):
    """No installed plugin provides the entry's family, or its requirement is not satisfied."""

    exit_code = 4


class HashMismatchError(RegistryError):
    """A downloaded or cached file does not have the sha256 the catalog pins."""

    exit_code = 5

    def __init__(self, name: str, path: str, want: str, got: str, outcome: str = "the bad file was removed") -> None:
        self.name, self.path, self.want, self.got, self.outcome = name, path, want, got, outcome
        super().__init__(f"sha256 mismatch for {name} ({path}): want {want}, got {got}; {outcome}")


class SizeExceededError(RegistryError):
    """A download went past the size the catalog pins for the file; it was stopped."""

    exit_code = 5

    def __init__(self, name: str, path: str, limit: int, got: int) -> None:
        self.name, self.path, self.limit, self.got = name, path, limit, got
        super().__init__(
            f"{name} ({path}): the Hub sent more than the catalog's size of {limit} bytes ({got} or more); "
            "download stopped ('refiners cache prune' removes the partial file)"
        )


class NotCachedError(RegistryError):
    """Offline mode is on and a file is not in the local cache."""

    exit_code = 6


class NetworkError(RegistryError):
    """The Hub could not be reached, refused the request, or the transfer was interrupted."""

    exit_code = 7


class LocalIOError(RegistryError):
    """The local file system failed: disk full, file-size limit, read-only cache, a path that is not a folder."""

    exit_code = 9


class PickleNotAllowedError(RegistryError, PickleRefusedError):
    """A pickled file was requested without both the entry's and the user's opt-in."""

    exit_code = 8


def exit_code_for(error: BaseException) -> int:
    """Return the CLI exit code for an error (1 when it has no specific code)."""
    return int(getattr(error, "exit_code", 1))
