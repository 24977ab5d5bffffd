"""Training checkpoints: written atomically, read back without unpickling anything but tensors and numbers.

A checkpoint is ``step-00000010.pt`` in the checkpoint folder: the trainable parameters, the optimizer and
gradient-scaler states, the step, and the settings that fix the sequence of batches. It is written to a
temporary file in the same folder, flushed to disk, then renamed: a run killed while saving leaves the
previous checkpoints and at most a stray ``.tmp`` file, never a half-written checkpoint.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from refiners_train.errors import TrainError

__all__ = ["checkpoint_path", "latest_checkpoint", "load_checkpoint", "save_checkpoint", "write_atomically"]

_NAME = re.compile(r"^step-(\d{8})\.pt$")


def checkpoint_path(folder: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` goes."""
    return folder / f"step-{step:08d}.pt"


def write_atomically(path: Path, write: Any) -> Path:
    """Call ``write(temporary_path)``, flush it to disk and rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        with temporary.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def save_checkpoint(folder: Path, step: int, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists and dicts of them) as the checkpoint of ``step``."""
    return write_atomically(checkpoint_path(folder, step), lambda target: torch.save({**state, "step": step}, target))


def latest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint of the highest step in ``folder``, or ``None``."""
    if not folder.is_dir():
        return None
    found = sorted(path for path in folder.iterdir() if _NAME.match(path.name))
    return found[-1] if found else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint (``weights_only``: no arbitrary object is unpickled).

    Raises:
        TrainError: the file is not a readable checkpoint.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise TrainError(f"{path}: not a readable checkpoint ({error})") from error
    if not isinstance(state, dict) or "step" not in state or "parameters" not in state:
        raise TrainError(f"{path}: not a refiners-train checkpoint")
    return state
