"""The catalog schema: entries, validation, and reading TOML catalog files.

A catalog file holds one ``[[adapter]]`` table per entry::

    [[adapter]]
    name = "sd15/controlnet-canny"       # unique, lowercase, may contain "/"
    family = "controlnet"
    base_model = "sd15"
    description = "..."
    license = "openrail"
    tags = ["canny", "edges"]
    requires = "refiners-controlnet>=0.1"  # optional, PEP 508
    allow_pickle = false                   # optional; pickled files need it (and the user's opt-in)

    [adapter.source]
    repo_id = "lllyasviel/control_v11p_sd15_canny"
    revision = "115a470d547982438f70198e353a921996e2e819"   # a 40-hex commit, never a branch

    [[adapter.source.files]]
    path = "diffusion_pytorch_model.safetensors"
    sha256 = "be713fb9..."
    size = 1445157124                      # optional

Nothing here imports torch or huggingface_hub.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from refiners_core.model_folder import PICKLE_SUFFIXES, is_pickle_name
from refiners_registry.errors import CatalogError

__all__ = [
    "PICKLE_SUFFIXES",
    "CatalogEntry",
    "CatalogIssue",
    "SourceFile",
    "SourceSpec",
    "entry_from_mapping",
    "is_pickle_path",
    "read_catalog_file",
    "validate_commit",
    "validate_relative_path",
    "validate_sha256",
]

_NAME = re.compile(r"[a-z0-9][a-z0-9._+-]*(/[a-z0-9][a-z0-9._+-]*)*")
_SLUG = re.compile(r"[a-z0-9][a-z0-9._-]*")
_REPO_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_REPO_ID = re.compile(rf"({_REPO_PART}/)?{_REPO_PART}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PATH_PART = re.compile(r"[A-Za-z0-9._+@=,-][A-Za-z0-9 ._+@=,-]*")

_ENTRY_KEYS = {"name", "family", "base_model", "description", "license", "tags", "requires", "allow_pickle", "source"}
_SOURCE_KEYS = {"repo_id", "revision", "files"}
_FILE_KEYS = {"path", "sha256", "size"}


@dataclass(frozen=True)
class SourceFile:
    """One file of an entry: its path in the repository, its sha256, and its size in bytes when known."""

    path: str
    sha256: str
    size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the file as a mapping with the schema's keys (``size`` left out when unknown)."""
        data: dict[str, Any] = {"path": self.path, "sha256": self.sha256}
        if self.size is not None:
            data["size"] = self.size
        return data


@dataclass(frozen=True)
class SourceSpec:
    """Where an entry's files live on the Hub: a model repository pinned to one commit."""

    repo_id: str
    revision: str
    files: tuple[SourceFile, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return the source as a mapping with the schema's keys."""
        return {"repo_id": self.repo_id, "revision": self.revision, "files": [f.to_dict() for f in self.files]}


@dataclass(frozen=True)
class CatalogEntry:
    """One adapter (or base-model component) of the catalog.

    Attributes:
        origin: where the entry was read from (a file path, ``plugin <name>``, ...), for messages only.
    """

    name: str
    family: str
    base_model: str
    description: str
    license: str
    tags: tuple[str, ...]
    source: SourceSpec
    requires: str | None = None
    allow_pickle: bool = False
    origin: str = field(default="", compare=False)

    @property
    def has_pickle(self) -> bool:
        """Whether any file of the entry is a pickle."""
        return any(is_pickle_path(f.path) for f in self.source.files)

    def to_dict(self) -> dict[str, Any]:
        """Return the entry as a mapping with the schema's field names (optional fields left out when unset)."""
        data: dict[str, Any] = {
            "name": self.name,
            "family": self.family,
            "base_model": self.base_model,
            "description": self.description,
            "license": self.license,
            "tags": list(self.tags),
        }
        if self.requires is not None:
            data["requires"] = self.requires
        if self.allow_pickle:
            data["allow_pickle"] = True
        data["source"] = self.source.to_dict()
        return data


@dataclass(frozen=True)
class CatalogIssue:
    """A problem found while reading catalogs: a skipped entry, an unreadable file, or a shadowed name."""

    origin: str
    message: str
    name: str | None = None

    def __str__(self) -> str:
        where = f"{self.origin}: {self.name}" if self.name else self.origin
        return f"{where}: {self.message}"


is_pickle_path = is_pickle_name  # the core's list of pickled suffixes (``.bin``, ``.pt``, ``.ckpt``, ...)


def validate_relative_path(path: object) -> str:
    """Check that ``path`` is a plain relative POSIX path inside a repository and return it.

    Rejects absolute paths, drive letters, backslashes, ``.``/``..`` components, empty components and
    control characters, so that joining it under a cache or local folder can never escape that folder.
    """
    if not isinstance(path, str) or not path:
        raise CatalogError("path must be a non-empty string")
    if path.startswith("/") or "\\" in path or ":" in path:
        raise CatalogError(f"path {path!r} must be relative, with '/' separators and no drive")
    for part in path.split("/"):
        if part in ("", ".", "..") or not _PATH_PART.fullmatch(part):
            raise CatalogError(f"path {path!r} has an invalid component {part!r}")
    return path


def validate_commit(revision: object) -> str:
    """Check that ``revision`` is a full 40-hex commit sha (branch and tag names are rejected) and return it."""
    if not isinstance(revision, str) or not _COMMIT.fullmatch(revision):
        raise CatalogError(f"revision {revision!r} must be a 40-hex lowercase commit sha, not a branch or tag")
    return revision


def validate_sha256(digest: object) -> str:
    """Check that ``digest`` is 64 lowercase hex characters and return it."""
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise CatalogError(f"sha256 {digest!r} must be 64 lowercase hex characters")
    return digest


def _text(data: Mapping[str, Any], key: str, *, pattern: re.Pattern[str] | None = None) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise CatalogError(f"{key!r} must be a non-empty string")
    if pattern is not None and not pattern.fullmatch(value):
        raise CatalogError(f"{key!r} has an invalid value {value!r}")
    if "\n" in value or "\r" in value:
        raise CatalogError(f"{key!r} must be a single line")
    return value


def _check_keys(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise CatalogError(f"unknown key(s) in {where}: {', '.join(unknown)}")


def _source_file(data: object) -> SourceFile:
    if not isinstance(data, Mapping):
        raise CatalogError("each entry of source.files must be a table")
    _check_keys(data, _FILE_KEYS, "source.files")
    path = validate_relative_path(data.get("path"))
    sha256 = validate_sha256(data.get("sha256"))
    size = data.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise CatalogError(f"size of {path!r} must be a non-negative integer")
    return SourceFile(path=path, sha256=sha256, size=size)


def _source(data: object) -> SourceSpec:
    if not isinstance(data, Mapping):
        raise CatalogError("'source' must be a table")
    _check_keys(data, _SOURCE_KEYS, "source")
    repo_id = _text(data, "repo_id", pattern=_REPO_ID)
    if ".." in repo_id or "--" in repo_id:
        raise CatalogError(f"repo_id {repo_id!r} must not contain '..' or '--'")
    revision = validate_commit(data.get("revision"))
    raw_files = data.get("files")
    if not isinstance(raw_files, list) or not raw_files:
        raise CatalogError("source.files must be a non-empty array of tables")
    files = tuple(_source_file(item) for item in raw_files)
    paths = [f.path for f in files]
    if len(set(paths)) != len(paths):
        raise CatalogError("source.files lists the same path twice")
    return SourceSpec(repo_id=repo_id, revision=revision, files=files)


def entry_from_mapping(data: Mapping[str, Any], *, origin: str = "") -> CatalogEntry:
    """Validate one ``[[adapter]]`` table and return the entry.

    Raises:
        CatalogError: naming the first invalid field.
    """
    if not isinstance(data, Mapping):
        raise CatalogError("an entry must be a table")
    _check_keys(data, _ENTRY_KEYS, "entry")
    name = _text(data, "name", pattern=_NAME)
    family = _text(data, "family", pattern=_SLUG)
    base_model = _text(data, "base_model", pattern=_SLUG)
    description = _text(data, "description")
    license_ = _text(data, "license")
    tags = data.get("tags")
    if not isinstance(tags, list) or not all(isinstance(t, str) and t and t.strip() == t for t in tags):
        raise CatalogError("'tags' must be an array of non-empty strings")
    requires = data.get("requires")
    if requires is not None:
        if not isinstance(requires, str):
            raise CatalogError("'requires' must be a PEP 508 string")
        try:
            Requirement(requires)
        except InvalidRequirement as error:
            raise CatalogError(f"'requires' is not a valid PEP 508 requirement: {error}") from error
    allow_pickle = data.get("allow_pickle", False)
    if not isinstance(allow_pickle, bool):
        raise CatalogError("'allow_pickle' must be a boolean")
    source = _source(data.get("source"))
    entry = CatalogEntry(
        name=name,
        family=family,
        base_model=base_model,
        description=description,
        license=license_,
        tags=tuple(tags),
        source=source,
        requires=requires,
        allow_pickle=allow_pickle,
        origin=origin,
    )
    if entry.has_pickle and not allow_pickle:
        raise CatalogError("pickled files (.bin, .pt, .ckpt, ...) need 'allow_pickle = true' on the entry")
    return entry


def _entry_label(data: object, index: int) -> str:
    name = data.get("name") if isinstance(data, Mapping) else None
    return name if isinstance(name, str) and name else f"entry #{index + 1}"


def iter_catalog_tables(tables: object, origin: str) -> Iterator[tuple[CatalogEntry | None, CatalogIssue | None]]:
    """Validate a list of ``[[adapter]]`` tables, yielding ``(entry, None)`` or ``(None, issue)`` for each."""
    if not isinstance(tables, list):
        yield None, CatalogIssue(origin, "'adapter' must be an array of tables ([[adapter]])")
        return
    for index, table in enumerate(tables):
        try:
            yield entry_from_mapping(table, origin=origin), None
        except CatalogError as error:
            yield None, CatalogIssue(origin, f"skipped: {error}", name=_entry_label(table, index))


def read_catalog_file(path: Path) -> tuple[list[CatalogEntry], list[CatalogIssue]]:
    """Read a TOML catalog file; return its valid entries and the issues found (bad entries are skipped).

    A file that cannot be read, decoded (UTF-8, with or without a BOM) or parsed yields no entries and
    one issue. A name repeated inside the
    file keeps its first entry.
    """
    origin = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        return [], [CatalogIssue(origin, f"cannot read catalog: {error.strerror or error}")]
    try:
        document = tomllib.loads(raw.decode("utf-8-sig"))  # a leading UTF-8 BOM is accepted
    except UnicodeDecodeError as error:
        return [], [CatalogIssue(origin, f"not UTF-8 text (byte {error.start}): catalog ignored")]
    except tomllib.TOMLDecodeError as error:
        return [], [CatalogIssue(origin, f"invalid TOML: {error}")]
    except RecursionError:
        return [], [CatalogIssue(origin, "invalid TOML: nested too deeply")]
    unknown = sorted(set(document) - {"adapter"})
    issues = [CatalogIssue(origin, f"unknown top-level key(s) ignored: {', '.join(unknown)}")] if unknown else []
    entries: list[CatalogEntry] = []
    seen: set[str] = set()
    for entry, issue in iter_catalog_tables(document.get("adapter", []), origin):
        if issue is not None:
            issues.append(issue)
        elif entry is not None:
            if entry.name in seen:
                issues.append(CatalogIssue(origin, "skipped: duplicate name in the same file", name=entry.name))
                continue
            seen.add(entry.name)
            entries.append(entry)
    return entries, issues
