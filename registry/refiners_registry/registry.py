"""The :class:`Registry`: look entries up, pull, verify, remove and load their files."""

from __future__ import annotations

import builtins
import difflib
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from refiners_core.errors import RefinersWarning
from refiners_registry.catalog import CatalogEntry, CatalogIssue, is_pickle_path, validate_commit
from refiners_registry.download import (
    FileCheck,
    cached_file,
    default_cache_dir,
    fetch_file,
    hash_and_record,
    remove_cached_file,
)
from refiners_registry.errors import (
    CatalogError,
    LocalIOError,
    PickleNotAllowedError,
    RegistryError,
    UnknownEntryError,
)
from refiners_registry.requirements import ensure_plugin
from refiners_registry.sources import collect_sources

if TYPE_CHECKING:
    import torch

__all__ = ["CatalogWarning", "Registry", "VerifyResult"]

_TRUE = {"1", "true", "yes", "on"}


class CatalogWarning(RefinersWarning):
    """A catalog entry was skipped, a catalog file was unreadable, or a name was shadowed."""


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of :meth:`Registry.verify` for one entry: one :class:`FileCheck` per file."""

    name: str
    files: tuple[FileCheck, ...]

    @property
    def ok(self) -> bool:
        """Every file is cached and matches its sha256."""
        return all(f.status == "ok" for f in self.files)

    @property
    def cached(self) -> bool:
        """At least one file of the entry is in the cache."""
        return any(f.status != "missing" for f in self.files)


def _offline_from_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


class Registry:
    """The merged catalog, and the files of its entries in the huggingface_hub cache.

    Args:
        catalogs: extra catalog files, merged after every other source.
        bundled / plugins / user: whether to read the bundled catalog, plugin catalogs, and user catalogs.
        cache_dir: huggingface_hub cache folder (default: ``HF_HUB_CACHE`` or ``$HF_HOME/hub``).
        offline: use only the cache (default: ``HF_HUB_OFFLINE``).
        endpoint: Hub URL (default: ``HF_ENDPOINT``, read by huggingface_hub).
        warn: emit a :class:`CatalogWarning` for each catalog issue.

    Attributes:
        report: called with progress messages during ``pull`` (e.g. ``"verifying sha256 of ..."``); None: silent.
    """

    def __init__(
        self,
        *,
        catalogs: Sequence[Path | str] = (),
        bundled: bool = True,
        plugins: bool = True,
        user: bool = True,
        cache_dir: Path | str | None = None,
        offline: bool | None = None,
        endpoint: str | None = None,
        warn: bool = True,
    ) -> None:
        merged = collect_sources(bundled=bundled, plugins=plugins, user=user, extra=[Path(c) for c in catalogs])
        self.entries: dict[str, CatalogEntry] = merged.entries
        self.issues: builtins.list[CatalogIssue] = merged.issues
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.offline = _offline_from_env() if offline is None else offline
        self.endpoint = endpoint
        self.report: Callable[[str], None] | None = None
        if warn:
            for issue in self.issues:
                warnings.warn(str(issue), CatalogWarning, stacklevel=2)

    # -- lookup (no torch, no network) -------------------------------------------------------------

    def list(self, family: str | None = None, base_model: str | None = None) -> builtins.list[CatalogEntry]:
        """Entries sorted by name, optionally filtered by family (aliases understood) and base model."""
        families = _family_matcher(family) if family is not None else None
        return [
            entry
            for name, entry in sorted(self.entries.items())
            if (families is None or families(entry.family)) and (base_model is None or entry.base_model == base_model)
        ]

    def search(self, text: str) -> builtins.list[CatalogEntry]:
        """Entries whose name, family, base model, description, tags or repository contain every word of ``text``."""
        words = text.lower().split()
        found = []
        for _, entry in sorted(self.entries.items()):
            haystack = " ".join(
                [entry.name, entry.family, entry.base_model, entry.description, entry.source.repo_id, *entry.tags]
            ).lower()
            if all(word in haystack for word in words):
                found.append(entry)
        return found

    def get(self, name: str) -> CatalogEntry:
        """The entry called ``name``.

        Raises:
            UnknownEntryError: with close names as suggestions.
        """
        entry = self.entries.get(name)
        if entry is None:
            raise UnknownEntryError(name, difflib.get_close_matches(name, list(self.entries), n=3, cutoff=0.5))
        return entry

    def local_paths(self, name: str) -> dict[str, Path | None]:
        """Where each file of the entry is in the cache (``None`` when absent), without hashing."""
        entry = self.get(name)
        return {
            f.path: cached_file(self.cache_dir, entry.source.repo_id, entry.source.revision, f.path)
            for f in entry.source.files
        }

    def is_installed(self, name: str) -> bool:
        """Whether every file of the entry is in the cache (hashes are not checked)."""
        return all(path is not None for path in self.local_paths(name).values())

    # -- files ---------------------------------------------------------------------------------------

    def pull(
        self,
        name: str,
        revision: str | None = None,
        local_dir: Path | str | None = None,
        force: bool = False,
        allow_pickle: bool = False,
        check_plugin: bool = True,
    ) -> Path:
        """Download the entry's files (or take them from the cache), check their sha256, return the local path.

        The path is the file itself for a one-file entry, else the folder holding the files (the snapshot
        folder, or ``local_dir``).

        Args:
            revision: another 40-hex commit of the same repository (the catalog's hashes still apply).
            local_dir: copy the files into this folder instead of handing out cache paths.
            force: download again even if cached.
            allow_pickle: the user's opt-in for pickled files (the entry must opt in too).
            check_plugin: refuse entries that no installed plugin can use (family, base model, ``requires``).

        Raises:
            UnknownEntryError, MissingPluginError, PickleNotAllowedError, NotCachedError, NetworkError,
            HashMismatchError.
        """
        entry = self.get(name)
        if check_plugin:
            ensure_plugin(entry)
        paths = self._fetch_all(entry, revision, local_dir, force, allow_pickle)
        if len(paths) == 1:
            return paths[0]
        first = entry.source.files[0].path
        return paths[0].parents[len(first.split("/")) - 1]

    def _fetch_all(
        self,
        entry: CatalogEntry,
        revision: str | None = None,
        local_dir: Path | str | None = None,
        force: bool = False,
        allow_pickle: bool = False,
    ) -> builtins.list[Path]:
        self._check_pickle(entry, allow_pickle)
        if revision is not None:
            try:
                validate_commit(revision)
            except CatalogError as error:
                raise RegistryError(str(error)) from error
        rev = revision or entry.source.revision
        target = Path(local_dir).expanduser().resolve() if local_dir is not None else None
        return [
            fetch_file(
                entry.name,
                entry.source.repo_id,
                rev,
                file,
                cache_dir=self.cache_dir,
                local_dir=target,
                force=force,
                offline=self.offline,
                endpoint=self.endpoint,
                report=self.report,
            )
            for file in entry.source.files
        ]

    def verify(self, name: str) -> VerifyResult:
        """Hash the entry's cached files again and compare them with the catalog (no network)."""
        entry = self.get(name)
        checks = []
        for file in entry.source.files:
            local = cached_file(self.cache_dir, entry.source.repo_id, entry.source.revision, file.path)
            if local is None:
                checks.append(FileCheck(file.path, "missing", file.sha256))
                continue
            try:
                got = hash_and_record(name, local, file.sha256)
            except FileNotFoundError as error:  # removed meanwhile: unreadable, as any other read failure here
                raise LocalIOError(f"{name}: cannot read {local}: {error.strerror or error}") from error
            checks.append(FileCheck(file.path, "ok" if got == file.sha256 else "mismatch", file.sha256, got, local))
        return VerifyResult(entry.name, tuple(checks))

    def remove(self, *names: str) -> int:
        """Remove the files of the named entries from the cache; return bytes freed.

        A file that an entry not named here also lists (same repository, commit and path) stays, and so
        does a blob that another snapshot links to: name the entries together to remove a shared file.
        """
        entries = [self.get(name) for name in names]
        freed = 0
        done: set[tuple[str, str, str]] = set()
        for entry in entries:
            shared = self.shared_files(entry.name, together=names)
            for f in entry.source.files:
                key = (entry.source.repo_id, entry.source.revision, f.path)
                if f.path in shared or key in done:
                    continue
                done.add(key)
                freed += remove_cached_file(self.cache_dir, *key)
        return freed

    def shared_files(self, name: str, together: Sequence[str] = ()) -> dict[str, builtins.list[str]]:
        """``{path: [other entry names]}`` for the entry's files that other catalog entries also list.

        Entries named in ``together`` do not count as others.
        """
        entry = self.get(name)
        mine = {(entry.source.repo_id, entry.source.revision, f.path) for f in entry.source.files}
        shared: dict[str, builtins.list[str]] = {}
        for other in self.entries.values():
            if other.name == entry.name or other.name in together:
                continue
            for f in other.source.files:
                key = (other.source.repo_id, other.source.revision, f.path)
                if key in mine:
                    shared.setdefault(f.path, []).append(other.name)
        return shared

    def load(
        self,
        name: str,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        allow_pickle: bool = False,
        check_plugin: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Pull the entry and read its tensors straight onto ``device``, cast to ``dtype`` when given.

        Several weight files are merged into one dict; a key present twice is an error.
        """
        entry = self.get(name)
        if check_plugin:
            ensure_plugin(entry)
        paths = self._fetch_all(entry, allow_pickle=allow_pickle)
        tensors: dict[str, Any] = {}
        for file, local in zip(entry.source.files, paths, strict=True):
            if not _is_weights(file.path):
                continue
            for key, value in _read_tensors(local, device, dtype, allow_pickle).items():
                if key in tensors:
                    raise RegistryError(f"{name}: tensor {key!r} appears in more than one file")
                tensors[key] = value
        return tensors

    @staticmethod
    def _check_pickle(entry: CatalogEntry, allow_pickle: bool) -> None:
        if entry.has_pickle and not (entry.allow_pickle and allow_pickle):
            raise PickleNotAllowedError(
                f"{entry.name} contains pickled files; pass --allow-pickle (allow_pickle=True) only if you trust them"
            )


def _is_weights(path: str) -> bool:
    return path.endswith(".safetensors") or is_pickle_path(path)


def _read_tensors(path: Path, device: Any, dtype: Any, allow_pickle: bool) -> dict[str, Any]:
    from refiners_core.weights import load_tensors

    return load_tensors(path, device=device, dtype=dtype, allow_pickle=allow_pickle)


def _family_matcher(family: str) -> Any:
    """A predicate telling whether a catalog family names the same family as ``family`` (aliases resolved)."""
    try:
        from refiners_core.plugins import adapter_families

        known = adapter_families()
    except Exception:  # listing must work even when plugin discovery fails
        known = {}
    wanted = known[family].name if family in known else family
    return lambda name: name == family or (known[name].name if name in known else name) == wanted
