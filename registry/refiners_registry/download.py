"""Fetching catalog files through huggingface_hub, and checking them with sha256.

huggingface_hub owns the transfer and the cache: its layout, file locks, resumable downloads into
temporary files renamed atomically, ``HF_ENDPOINT``, ``HF_HOME``/``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``
and tokens; files are looked up with its ``try_to_load_from_cache``. It only checks sizes, so every file
handed out here is hashed first, once: a file hashed before and unchanged since is trusted without being
read again (see :mod:`refiners_registry.verified`).

A file that does not match the catalog is refused, and removed only when it is provably corrupt: the
cache stores each blob under the hash the server announced (sha256 for large files, the git object id
for small ones), so a blob whose content disagrees with its own name is damaged and nothing can rely on
it. A blob that matches its name is the genuine file the Hub serves, possibly shared with other entries
and other libraries: a wrong catalog hash never deletes it. Links pointing out of the cache are never
followed. Nothing is written into huggingface_hub's metadata folders.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from refiners_registry.catalog import SourceFile, validate_commit, validate_relative_path
from refiners_registry.errors import (
    HashMismatchError,
    LocalIOError,
    NetworkError,
    NotCachedError,
    RegistryError,
    SizeExceededError,
)
from refiners_registry.verified import forget_verified, is_verified, remember_verified

__all__ = [
    "CHUNK_SIZE",
    "FileCheck",
    "cached_file",
    "default_cache_dir",
    "fetch_file",
    "hash_and_record",
    "local_io_error",
    "remove_cached_file",
    "sha256_file",
]

CHUNK_SIZE = 1 << 20

_SHA256_NAME = re.compile(r"[0-9a-f]{64}")
_GIT_SHA1_NAME = re.compile(r"[0-9a-f]{40}")
# errors of the local file system (as opposed to the network): full disk, size limit, permissions, bad paths
_LOCAL_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("ENOSPC", "EFBIG", "EROFS", "EACCES", "EPERM", "EDQUOT", "ENOTDIR", "EISDIR", "EEXIST", "ENAMETOOLONG")
    if hasattr(errno, name)
)


def default_cache_dir() -> Path:
    """The huggingface_hub cache folder (``HF_HUB_CACHE``, else ``$HF_HOME/hub``), read from the environment now.

    huggingface_hub reads these variables once, when it is imported; reading them here keeps ``list``
    and ``info`` free of that import and follows changes made after it.
    """
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


def _git_blob_sha1(path: Path) -> str:
    """The git object id of a file's content (the name huggingface_hub gives the blob of a small file)."""
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def local_io_error(error: BaseException) -> OSError | None:
    """The local file-system error (full disk, size limit, read-only, not a folder, ...) behind ``error``, if any."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _LOCAL_ERRNOS:
            return current
        current = current.__cause__ or current.__context__
    return None


def _describe_os_error(error: OSError) -> str:
    where = f" ({error.filename})" if error.filename else ""
    return f"{error.strerror or error}{where}"


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
    from huggingface_hub.file_download import repo_folder_name

    return cache_dir / repo_folder_name(repo_id=repo_id, repo_type="model")


def cached_file(cache_dir: Path, repo_id: str, revision: str, path: str) -> Path | None:
    """Path of a file in the snapshot of ``revision`` if it is in the cache (no network, no torch).

    An absent cache folder is answered without importing huggingface_hub, which keeps listings fast.
    """
    validate_commit(revision)
    validate_relative_path(path)
    if not cache_dir.is_dir():
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, path, cache_dir=cache_dir, revision=revision, repo_type="model")
    return Path(found) if isinstance(found, str) else None


def remove_cached_file(cache_dir: Path, repo_id: str, revision: str, path: str) -> int:
    """Remove one file's snapshot link and its blob when no other snapshot uses it; return bytes freed.

    A link whose target lies outside the repository's ``blobs`` folder is removed without touching its target.
    """
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
        if blob.is_file() and _inside_blobs(storage, blob) and not _blob_in_use(storage, blob):
            freed = blob.stat().st_size
            blob.unlink()
    else:  # no symlinks on this file system: the snapshot holds a copy
        freed = pointer.stat().st_size
        pointer.unlink()
    _remove_empty_parents(pointer.parent, storage / "snapshots")
    return freed


def _inside_blobs(storage: Path, blob: Path) -> bool:
    return blob.parent == Path(os.path.realpath(storage / "blobs"))


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


def _blob_is_corrupt(blob: Path, content_sha256: str) -> bool:
    """Whether a cache blob's content disagrees with the hash it is named after (False when the name says nothing)."""
    if _SHA256_NAME.fullmatch(blob.name):
        return blob.name != content_sha256
    if _GIT_SHA1_NAME.fullmatch(blob.name):
        return blob.name != _git_blob_sha1(blob)
    return False


def _discard_cached(cache_dir: Path, repo_id: str, pointer: Path, got: str) -> str:
    """Deal with a cached file that failed its check; return what happened, for the error message.

    Only a blob that is provably corrupt (content and name disagree) is deleted, with its link. A link
    leading out of the repository's ``blobs`` folder is removed, its target never touched.
    """
    storage = _storage_folder(cache_dir, repo_id)
    try:
        if not pointer.is_symlink():
            return "the file was kept (not a cache link)"
        blob = Path(os.path.realpath(pointer))
        if not _inside_blobs(storage, blob):
            pointer.unlink()
            return "its cache link pointed outside the cache and was removed; the target was not touched"
        if not _blob_is_corrupt(blob, got):
            return (
                "the cached file is intact (it matches the hash the Hub announced) and was kept: "
                "the catalog's sha256 is wrong or the file changed on the Hub"
            )
        blob.unlink(missing_ok=True)
        pointer.unlink(missing_ok=True)
    except OSError as error:
        return f"the bad file could not be removed: {_describe_os_error(error)}"
    return "the bad file was removed"


def _discard_local(local_dir: Path, downloaded: Path) -> str:
    """Delete a ``--local-dir`` copy that failed its check (never a link's target outside the folder)."""
    try:
        if downloaded.is_symlink() or local_dir.resolve() not in downloaded.resolve().parents:
            return "the file was kept (it is a link or lies outside the folder)"
        downloaded.unlink(missing_ok=True)
    except OSError as error:
        return f"the bad file could not be removed: {_describe_os_error(error)}"
    return "the bad file was removed"


def hash_and_record(name: str, path: Path, sha256: str) -> str:
    """Hash ``path``; record it as verified when it matches ``sha256``, else drop any record of it; return the hash.

    Raises:
        FileNotFoundError: the file vanished while being read.
        LocalIOError: it cannot be read (``name`` is the entry, for the message).
    """
    try:
        got = sha256_file(path)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise LocalIOError(f"{name}: cannot read {path}: {_describe_os_error(error)}") from error
    if got == sha256:
        remember_verified(path, got)
    else:
        forget_verified(path)
    return got


def check_file(
    name: str,
    file: SourceFile,
    downloaded: Path,
    local_dir: Path | None = None,
    *,
    cache_dir: Path,
    repo_id: str,
    report: Callable[[str], None] | None = None,
) -> None:
    """Hash ``downloaded`` (unless it was hashed before and is unchanged since); on mismatch deal with it (see the
    module docstring) and raise :class:`HashMismatchError`.

    Raises:
        FileNotFoundError: the file vanished while being checked (another process removed a corrupt blob).
        LocalIOError: it cannot be read.
    """
    if is_verified(downloaded, file.sha256):
        return
    if report is not None:
        report(f"verifying sha256 of {file.path}")
    got = hash_and_record(name, downloaded, file.sha256)
    if got == file.sha256:
        return
    if local_dir is None:
        outcome = _discard_cached(cache_dir, repo_id, downloaded, got)
    else:
        outcome = _discard_local(local_dir, downloaded)
    raise HashMismatchError(name, file.path, file.sha256, got, outcome=outcome)


def _size_guard(name: str, file: SourceFile) -> Any:
    """A huggingface_hub progress-bar class that stops a transfer going past the catalog's ``size``."""
    from huggingface_hub.utils import tqdm

    limit = file.size

    class SizeGuard(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            total = kwargs.get("total")
            if limit is not None and total is not None and total > limit:
                raise SizeExceededError(name, file.path, limit, int(total))
            super().__init__(*args, **kwargs)
            self._received = int(kwargs.get("initial") or 0)

        def update(self, n: float | None = 1) -> bool | None:
            self._received += int(n or 0)
            if limit is not None and self._received > limit:
                raise SizeExceededError(name, file.path, limit, self._received)
            return super().update(n)  # type: ignore[no-any-return]

    return SizeGuard


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
        LocalIOError: the local file system failed (disk full, file-size limit, read-only, not a folder).
        SizeExceededError: the transfer went past the catalog's ``size`` (it was stopped).
        HashMismatchError: the file does not match the catalog (removed only when provably corrupt).

    ``report`` receives progress messages (the CLI prints them on stderr).
    """
    validate_commit(revision)
    validate_relative_path(file.path)
    for attempt in range(2):
        result = _download(name, repo_id, revision, file, cache_dir, local_dir, force, offline, endpoint)
        if force:
            forget_verified(result)
        try:
            check_file(name, file, result, local_dir, cache_dir=cache_dir, repo_id=repo_id, report=report)
        except FileNotFoundError as error:  # another process removed a corrupt copy meanwhile: fetch it again
            if attempt == 0 and not offline:
                continue
            raise NotCachedError(f"{name}: {file.path} vanished from the cache while being checked") from error
        return result
    raise AssertionError("unreachable")  # pragma: no cover


def _download(
    name: str,
    repo_id: str,
    revision: str,
    file: SourceFile,
    cache_dir: Path,
    local_dir: Path | None,
    force: bool,
    offline: bool,
    endpoint: str | None,
) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}@{revision[:12]}/{file.path}"
    if local_dir is not None and local_dir.exists() and not local_dir.is_dir():
        raise LocalIOError(f"{name}: {local_dir} exists and is not a folder")
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
            tqdm_class=_size_guard(name, file),
        )
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as error:
        if offline or isinstance(error, OfflineModeIsEnabled):
            raise NotCachedError(f"{name}: {file.path} is not in the cache and offline mode is on") from error
        raise _local_or(error, NetworkError(f"{name}: cannot download {where}: {_cause(error)}"), name) from error
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
        message = _first_line(str(error)) or type(error).__name__
        raise _local_or(error, NetworkError(f"{name}: download of {where} failed: {message}"), name) from error
    return Path(str(downloaded))


def _local_or(error: BaseException, otherwise: RegistryError, name: str) -> RegistryError:
    """A LocalIOError when a local file-system error caused ``error``, else ``otherwise``."""
    local = local_io_error(error)
    if local is None:
        return otherwise
    return LocalIOError(f"{name}: cannot write the download: {_describe_os_error(local)}")


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _cause(error: BaseException) -> str:
    cause = error.__cause__ or error.__context__
    message = _first_line(str(cause)) if cause is not None else ""
    return message or _first_line(str(error)) or type(error).__name__
