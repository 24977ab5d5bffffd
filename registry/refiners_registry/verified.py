"""A record of the files already hashed, so that a multi-GB cached file is not read again on every use.

After a file's sha256 matched the catalog, a small record is written to
``$XDG_CACHE_HOME/refiners/verified/`` (``~/.cache`` without it): the file's real path, the hash and
its identity (device, inode, size, modification and status-change times, in nanoseconds). A later pull
or load trusts the file without reading it only when all of these are unchanged. Any write to the file,
even one that restores its modification time, changes its status-change time (which no user-level call
can set back), so a file changed after its check is hashed again. File systems keep these times at a
coarse granularity (a few milliseconds), so a record is trusted only when it was written at least
:data:`SETTLED_NS` after the file's last change (a file changed within the same tick as its check would
otherwise look unchanged); a file hashed right after a quick download is hashed once more on its next use.
``refiners adapters verify`` and ``force`` always hash. Records never live in huggingface_hub's cache
folder; failing to read or write one only costs a hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

SETTLED_NS = 2_000_000_000
"""How long after a file's last change its record must have been written to be trusted."""


def verified_dir() -> Path:
    """The folder of the verification records, read from the environment now."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "refiners" / "verified"


def _identity(path: Path) -> dict[str, Any]:
    real = os.path.realpath(path)
    stat = os.stat(real)
    return {
        "path": real,
        "device": stat.st_dev,
        "inode": stat.st_ino,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "ctime_ns": stat.st_ctime_ns,
    }


def _record_path(path: Path) -> Path:
    name = hashlib.sha256(os.path.realpath(path).encode()).hexdigest()
    return verified_dir() / f"{name}.json"


def is_verified(path: Path, sha256: str) -> bool:
    """Whether ``path`` was found to hash to ``sha256`` and has not changed since."""
    try:
        record = json.loads(_record_path(path).read_text(encoding="utf-8"))
        identity = _identity(path)
        settled = int(record.get("recorded_ns", 0)) - identity["ctime_ns"] >= SETTLED_NS
        return bool(settled and record.get("sha256") == sha256 and record.get("file") == identity)
    except (OSError, ValueError, TypeError, AttributeError):
        return False


def remember_verified(path: Path, sha256: str) -> None:
    """Record that ``path`` hashes to ``sha256`` (written atomically; silently skipped when it cannot be)."""
    record = _record_path(path)
    temporary = record.with_name(f"{record.name}.{os.getpid()}.tmp")
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        content = {"sha256": sha256, "file": _identity(path), "recorded_ns": time.time_ns()}
        temporary.write_text(json.dumps(content), encoding="utf-8")
        os.replace(temporary, record)
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)


def forget_verified(path: Path) -> None:
    """Drop the record of ``path``, if any."""
    with contextlib.suppress(OSError):
        _record_path(path).unlink(missing_ok=True)
