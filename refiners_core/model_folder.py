"""Finding the weight files of a Hub-style model folder (diffusers and transformers layouts).

Importing this module never imports torch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from refiners_core.errors import PickleRefusedError, WeightsError

__all__ = ["DEFAULT_WEIGHT_STEMS", "PICKLE_SUFFIXES", "find_weight_files", "is_pickle_name"]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
"""File suffixes of pickled (``torch.save``) weights: refused unless the user opts in."""

DEFAULT_WEIGHT_STEMS = ("diffusion_pytorch_model", "model")
"""Weight file names (without suffix) of diffusers and transformers model folders."""


def is_pickle_name(name: str | Path) -> bool:
    """Whether a file name or path ends with a pickled-weights suffix (``.bin``, ``.pt``, ``.ckpt``...)."""
    return Path(str(name)).suffix.lower() in PICKLE_SUFFIXES


def _shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
    except (OSError, ValueError, AttributeError) as error:
        raise WeightsError(f"cannot read shard index {index}: {error}") from error
    shards = [index.parent / name for name in sorted(set(weight_map.values()))]
    absent = [shard.name for shard in shards if not shard.is_file()]
    if not shards or absent:
        raise WeightsError(f"{index} lists no shards or absent ones: {', '.join(absent) or 'none listed'}")
    return shards


def _candidates(stem: str, suffix: str) -> tuple[str, str]:
    return f"{stem}{suffix}", f"{stem}{suffix}.index.json"


def find_weight_files(
    folder: str | Path,
    stems: str | Sequence[str] = DEFAULT_WEIGHT_STEMS,
    *,
    variant: str | None = None,
    allow_pickle: bool = False,
    any_single_file: bool = False,
    what: str = "weights",
) -> list[Path]:
    """The weight file(s) of a model folder, in the order to read them.

    For each variant (``variant`` alone when given; else none, then ``fp16``) and each name in ``stems``:
    ``<stem>[.<variant>].safetensors``, else the shards listed by ``<stem>[.<variant>].safetensors.index.json``,
    else (pickled, only with ``allow_pickle``) ``<stem>[.<variant>].bin`` or its ``.bin.index.json`` shards.
    With ``any_single_file``, a folder holding exactly one ``.safetensors`` file is read from it at last.

    Raises:
        PickleRefusedError: only pickled weights were found and ``allow_pickle`` is false.
        WeightsError: nothing fits; the message names ``what``, the folder, the names looked for and the
            files present.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"{what} not found: {folder} is not a folder")
    names = [stems] if isinstance(stems, str) else list(stems)
    variants: list[str | None] = [variant] if variant else [None, "fp16"]
    looked: list[str] = []
    pickled: Path | None = None
    for candidate in variants:
        tail = f".{candidate}" if candidate else ""
        for stem in names:
            single, index = _candidates(f"{stem}{tail}", ".safetensors")
            looked.append(single)
            if (folder / single).is_file():
                return [folder / single]
            if (folder / index).is_file():
                return _shards(folder / index)
            single, index = _candidates(f"{stem}{tail}", ".bin")
            found = folder / single if (folder / single).is_file() else folder / index
            if found.is_file():
                if allow_pickle:
                    return _shards(found) if found.name.endswith(".index.json") else [found]
                pickled = pickled or found
    if any_single_file:
        safetensors = sorted(folder.glob("*.safetensors"))
        if len(safetensors) == 1:
            return safetensors
    if pickled is not None:
        raise PickleRefusedError(
            f"{folder} holds only pickled {what} ({pickled.name}): loading it can run arbitrary code. Convert it "
            "to safetensors, or pass allow_pickle=True (uses torch.load(weights_only=True)) if you trust its source."
        )
    present = ", ".join(sorted(path.name for path in folder.iterdir())) or "nothing"
    wanted = [f"{', '.join(looked)} (or their .index.json shards)"] if looked else []
    wanted += ["a single .safetensors file"] if any_single_file else []
    raise WeightsError(f"no {what} in {folder}: looked for {' or '.join(wanted) or 'nothing'}; found {present}")
