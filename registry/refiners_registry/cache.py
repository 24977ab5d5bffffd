"""Cleaning the huggingface_hub cache of what interrupted or removed downloads leave behind."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["prune"]


def _lock_is_free(lock_path: Path) -> bool:
    """Whether no process holds huggingface_hub's download lock (so a temporary file is abandoned)."""
    from filelock import FileLock, Timeout

    if not lock_path.exists():
        return True
    try:
        with FileLock(str(lock_path), timeout=0):
            return True
    except Timeout:
        return False


def prune(cache_dir: Path, *, dry_run: bool = False) -> tuple[list[Path], int]:
    """Remove leftovers from every model repository in ``cache_dir``; return what was removed and bytes freed.

    Leftovers are: ``*.incomplete`` temporary files whose download lock is free (a download still running
    holds it), blobs that no snapshot links to, snapshot links whose blob is gone, and empty folders.
    Complete files that some snapshot uses are never touched.
    """
    removed: list[Path] = []
    freed = 0
    if not cache_dir.is_dir():
        return removed, freed
    for storage in sorted(cache_dir.glob("models--*")):
        blobs = storage / "blobs"
        snapshots = storage / "snapshots"
        used: set[Path] = set()
        for root, _dirs, files in os.walk(snapshots):
            for name in files:
                link = Path(root) / name
                if link.is_symlink():
                    target = Path(os.path.realpath(link))
                    if target.exists():
                        used.add(target)
                    else:
                        removed.append(link)
                        if not dry_run:
                            link.unlink()
        if not blobs.is_dir():
            continue
        for blob in sorted(blobs.iterdir()):
            if not blob.is_file():
                continue
            if blob.name.endswith(".incomplete"):
                etag = blob.name.split(".", 1)[0]
                lock = cache_dir / ".locks" / storage.name / f"{etag}.lock"
                if not _lock_is_free(lock):
                    continue
            elif blob.resolve() in used:
                continue
            size = blob.stat().st_size
            removed.append(blob)
            freed += size
            if not dry_run:
                blob.unlink()
        if not dry_run:
            for root, _dirs, _files in os.walk(snapshots, topdown=False):
                if Path(root) != snapshots and not os.listdir(root):
                    try:
                        os.rmdir(root)
                    except OSError:
                        pass
                    else:
                        removed.append(Path(root))
    return removed, freed
