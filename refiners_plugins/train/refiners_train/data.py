"""Training data as the other trainers read it: images with captions, checked before any step runs.

A folder holds images (``.png``, ``.jpg``/``.jpeg``, ``.webp``) each with a same-stem ``.txt`` caption, or a
``metadata.jsonl`` whose lines are ``{"file_name": ..., "text": ...}`` (files relative to the folder). Every
image is decoded once when the folder is read, so a broken file or a missing caption is reported (naming the
file) before training starts. Images are resized to cover their training size and center-cropped to it:
one square size (``--resolution``), or one size per aspect-ratio bucket (:func:`bucket_sizes`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from refiners_train.errors import TrainError

__all__ = ["IMAGE_SUFFIXES", "Sample", "TrainingData", "bucket_sizes", "load_image", "read_folder", "tag_frequency"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
METADATA_FILE = "metadata.jsonl"


@dataclass(frozen=True)
class Sample:
    """One training image: its file, caption and size in pixels ``(width, height)``."""

    path: Path
    caption: str
    size: tuple[int, int]


def _checked_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            image.load()
            return image.size
    except FileNotFoundError as error:
        raise TrainError(f"{path}: no such image") from error
    except Exception as error:
        raise TrainError(f"{path}: not a readable image ({error})") from error


def _from_metadata(folder: Path, metadata: Path) -> list[tuple[Path, str]]:
    entries: list[tuple[Path, str]] = []
    for number, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            file_name, text = record["file_name"], record["text"]
        except (ValueError, KeyError, TypeError) as error:
            raise TrainError(f"{metadata}, line {number}: expected {{'file_name': ..., 'text': ...}}") from error
        if not isinstance(file_name, str) or not isinstance(text, str):
            raise TrainError(f"{metadata}, line {number}: file_name and text must be strings")
        entries.append((folder / file_name, text))
    return entries


def _from_captions(folder: Path) -> list[tuple[Path, str]]:
    entries: list[tuple[Path, str]] = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        caption = path.with_suffix(".txt")
        if not caption.is_file():
            raise TrainError(f"{path}: no caption (expected {caption.name} next to it, or a {METADATA_FILE})")
        entries.append((path, caption.read_text(encoding="utf-8").strip()))
    return entries


def read_folder(folder: str | Path) -> list[Sample]:
    """Every sample of ``folder``, each image decoded once to check it.

    Raises:
        TrainError: no such folder, no image, an image without caption, an unreadable image, a bad
            ``metadata.jsonl`` line (the message names the file).
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise TrainError(f"{root}: no such folder (--data takes a folder of images and captions)")
    metadata = root / METADATA_FILE
    entries = _from_metadata(root, metadata) if metadata.is_file() else _from_captions(root)
    if not entries:
        raise TrainError(f"{root}: no training image ({', '.join(IMAGE_SUFFIXES)} with captions)")
    return [Sample(path, caption, _checked_size(path)) for path, caption in entries]


def tag_frequency(samples: list[Sample]) -> dict[str, int]:
    """How many captions hold each comma-separated tag (kohya's ``ss_tag_frequency``)."""
    counts: Counter[str] = Counter()
    for sample in samples:
        counts.update({tag.strip() for tag in sample.caption.split(",") if tag.strip()})
    return dict(counts)


def bucket_sizes(resolution: int, step: int, max_ratio: float = 4.0) -> list[tuple[int, int]]:
    """kohya-style buckets: ``(width, height)`` multiples of ``step`` with at most ``resolution**2`` pixels,
    the largest height for each width, aspect ratios up to ``max_ratio``."""
    sizes: set[tuple[int, int]] = set()
    width = step
    while width <= resolution * max_ratio:
        height = (resolution * resolution // width) // step * step
        if height >= step and max(width / height, height / width) <= max_ratio:
            sizes.add((width, height))
        width += step
    return sorted(sizes)


def nearest_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to ``size``'s (in log ratio)."""
    import math

    ratio = math.log(size[0] / size[1])
    return min(buckets, key=lambda bucket: (abs(math.log(bucket[0] / bucket[1]) - ratio), -bucket[0] * bucket[1]))


def load_image(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """The image at ``path`` resized to cover ``size`` ``(width, height)`` and center-cropped.

    Returns ``[3, H, W]`` with values in [0, 1].
    """
    width, height = size
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    scale = max(width / image.width, height / image.height)
    resized = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.resize(resized, Image.Resampling.BICUBIC)
    left, top = (resized[0] - width) // 2, (resized[1] - height) // 2
    image = image.crop((left, top, left + width, top + height))
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.view(height, width, 3).permute(2, 0, 1).float() / 255.0


@dataclass
class TrainingData:
    """Samples with the training size of each (one size, or its aspect-ratio bucket)."""

    samples: list[Sample]
    sizes: list[tuple[int, int]]

    @classmethod
    def build(cls, samples: list[Sample], resolution: int, buckets: bool = False, step: int = 64) -> TrainingData:
        """Square ``resolution`` for every sample, or with ``buckets`` the nearest of :func:`bucket_sizes`."""
        if not buckets:
            return cls(samples, [(resolution, resolution)] * len(samples))
        choices = bucket_sizes(resolution, step)
        return cls(samples, [nearest_bucket(sample.size, choices) for sample in samples])

    def groups(self) -> list[list[int]]:
        """Sample indices grouped by training size (sorted by size): a batch draws from one group."""
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, size in enumerate(self.sizes):
            by_size.setdefault(size, []).append(index)
        return [by_size[size] for size in sorted(by_size)]

    def image(self, index: int) -> torch.Tensor:
        """Sample ``index``'s pixels at its training size."""
        return load_image(self.samples[index].path, self.sizes[index])
