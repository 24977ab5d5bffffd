"""Fetching catalog files through huggingface_hub, and checking them with sha256.

huggingface_hub owns the transfer: its cache layout, file locks, resumable downloads into temporary
files renamed atomically, ``HF_ENDPOINT``, ``HF_HOME``/``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and tokens.
It only checks sizes, so every file handed out here is hashed first; a file whose sha256 differs from
the catalog is deleted (blob and snapshot link, or local copy and its metadata) before the error is raised.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from refiners_registry.catalog import SourceFile, validate_commit, validate_relative_path
from refiners_registry.errors import HashMismatchError, NetworkError, NotCachedError, RegistryError

__all__ = [
    "CHUNK_SIZE",
    "FileCheck",
    "cached_file",
    "default_cache_dir",
    "fetch_file",
    "remove_cached_file",
    "sha256_file",
]

CHUNK_SIZE = 1 << 20


def default_cache_dir() -> Path:
    """The huggingface_hub cache folder (``HF_HUB_CACHE``, else ``$HF_HOME/hub``), read from the environment now."""
    explicit = os.environ.get("HF_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class FileCheck:
    """The result of checking one file of an entry.

    Attributes:
        status: ``ok`` (hash matches), ``mismatch`` (it does not), or ``missing`` (not in the cache).
    """

    path: str
    status: Literal["ok", "mismatch", "missing"]
    want: str
    got: str | None = None
    local_path: Path | None = None


def _storage_folder(cache_dir: Path, repo_id: str) -> Path:
    return cache_dir / ("models--" + repo_id.replace("/", "--"))


def cached_file(cache_dir: Path, repo_id: str, revision: str, path: str) -> Path | None:
    """Path of a file in the snapshot of ``revision`` if it is in the cache (no network, no torch)."""
    validate_commit(revision)
    validate_relative_path(path)
    pointer = _storage_folder(cache_dir, repo_id) / "snapshots" / revision / Path(*path.split("/"))
    return pointer if pointer.is_file() else None


def remove_cached_file(cache_dir: Path, repo_id: str, revision: str, path: str) -> int:
    """Remove one file's snapshot link and its blob when no other snapshot uses it; return bytes freed."""
    validate_commit(revision)
    validate_relative_path(path)
    storage = _storage_folder(cache_dir, repo_id)
    pointer = storage / "snapshots" / revision / Path(*path.split("/"))
    if not (pointer.is_symlink() or pointer.exists()):
        return 0
    freed = 0
    if pointer.is_symlink():
        blob = Path(os.path.realpath(pointer))
        pointer.unlink()
        if blob.is_file() and blob.parent == (storage / "blobs").resolve() and not _blob_in_use(storage, blob):
            freed = blob.stat().st_size
            blob.unlink()
    else:  # no symlinks on this file system: the snapshot holds a copy
        freed = pointer.stat().st_size
        pointer.unlink()
    _remove_empty_parents(pointer.parent, storage / "snapshots")
    return freed


def _blob_in_use(storage: Path, blob: Path) -> bool:
    for root, _dirs, files in os.walk(storage / "snapshots"):
        for name in files:
            link = Path(root) / name
            if link.is_symlink() and Path(os.path.realpath(link)) == blob:
                return True
    return False


def _remove_empty_parents(folder: Path, stop: Path) -> None:
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def _discard(downloaded: Path, local_dir: Path | None, path: str) -> None:
    """Delete a file that failed its hash check, so that nothing reuses it."""
    if local_dir is None:
        blob = Path(os.path.realpath(downloaded))
        if downloaded.is_symlink():
            downloaded.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
    else:
        downloaded.unlink(missing_ok=True)
        # huggingface_hub's record of the local copy; without it a later pull cannot trust a stale file.
        metadata = local_dir / ".cache" / "huggingface" / "download" / Path(*f"{path}.metadata".split("/"))
        metadata.unlink(missing_ok=True)


def check_file(name: str, file: SourceFile, downloaded: Path, local_dir: Path | None = None) -> None:
    """Hash ``downloaded``; on mismatch delete it and raise :class:`HashMismatchError` with want/got."""
    got = sha256_file(downloaded)
    if got != file.sha256:
        _discard(downloaded, local_dir, file.path)
        raise HashMismatchError(name, file.path, file.sha256, got)


def fetch_file(
    name: str,
    repo_id: str,
    revision: str,
    file: SourceFile,
    *,
    cache_dir: Path,
    local_dir: Path | None = None,
    force: bool = False,
    offline: bool = False,
    endpoint: str | None = None,
    report: Callable[[str], None] | None = None,
) -> Path:
    """Download one file (or take it from the cache), check its sha256 and return its local path.

    Raises:
        NotCachedError: offline and the file is not cached.
        NetworkError: the Hub could not be reached, answered with an error, or cut the transfer.
        HashMismatchError: the file does not match the catalog (it has been deleted).

    ``report`` receives progress messages (the CLI prints them on stderr).
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    validate_commit(revision)
    validate_relative_path(file.path)
    where = f"{repo_id}@{revision[:12]}/{file.path}"
    try:
        downloaded = hf_hub_download(
            repo_id=repo_id,
            filename=file.path,
            revision=revision,
            cache_dir=cache_dir,
            local_dir=local_dir,
            force_download=force,
            local_files_only=offline,
            endpoint=endpoint,
            library_name="refiners-registry",
        )
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as error:
        if offline or isinstance(error, OfflineModeIsEnabled):
            raise NotCachedError(f"{name}: {file.path} is not in the cache and offline mode is on") from error
        raise NetworkError(f"{name}: cannot download {where}: {_cause(error)}") from error
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as error:
        raise NetworkError(f"{name}: the Hub has no {where} ({type(error).__name__})") from error
    except HfHubHTTPError as error:
        raise NetworkError(f"{name}: the Hub refused {where}: {_first_line(str(error))}") from error
    except ValueError as error:
        if offline:  # huggingface_hub refuses force_download while offline
            raise NotCachedError(f"{name}: cannot force a download in offline mode") from error
        raise RegistryError(f"{name}: invalid request for {where}: {_first_line(str(error))}") from error
    except RegistryError:
        raise
    except Exception as error:  # transport errors (connection refused, body cut short, timeouts, size mismatch)
        raise NetworkError(
            f"{name}: download of {where} failed: {_first_line(str(error)) or type(error).__name__}"
        ) from error
    result = Path(str(downloaded))
    if report is not None:
        report(f"verifying sha256 of {file.path}")
    check_file(name, file, result, local_dir)
    return result


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _cause(error: BaseException) -> str:
    cause = error.__cause__ or error.__context__
    message = _first_line(str(cause)) if cause is not None else ""
    return message or _first_line(str(error)) or type(error).__name__
