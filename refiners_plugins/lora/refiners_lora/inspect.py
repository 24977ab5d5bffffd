"""``refiners lora inspect``: what a LoRA file holds, without a model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from refiners_lora.metadata import read_lora_metadata


@dataclass
class LoraSummary:
    """A LoRA file at a glance (see :func:`inspect_lora`)."""

    file: str
    format: str
    algorithms: list[str]
    ranks: list[int]
    alphas: list[float]
    base_model: str | None
    components: dict[str, int]
    trigger_words: list[str]
    size_bytes: int
    parameters: int
    layers: int
    title: str | None = None
    unknown_keys: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def _rank(entry: Any) -> int | None:
    from refiners_lora.formats.common import LoraWeights

    if isinstance(entry, LoraWeights):
        return entry.rank
    tensors = entry.tensors
    for key in ("lora_down.weight", "hada_w1_b", "lokr_w1_b", "lokr_w2_b", "a2.weight"):
        if key in tensors:
            return int(tensors[key].shape[0])
    return entry.rank


def _algorithm(entry: Any) -> str:
    from refiners_lora.formats.common import LoraWeights

    if isinstance(entry, LoraWeights):
        return "lora"
    if "dora_scale" in entry.tensors or "lora_magnitude_vector" in entry.tensors:
        return f"dora ({entry.algorithm})"
    if entry.algorithm == "lora" and "lora_mid.weight" in entry.tensors:
        return "locon (tucker)"
    if entry.algorithm.startswith("peft_"):
        return f"{entry.algorithm.removeprefix('peft_')} (peft)"  # PEFT's OFT / BOFT rotate the input side
    return str(entry.algorithm)


def inspect_lora(path: str | Path) -> LoraSummary:
    """Read ``path`` (a LoRA file or a folder holding one) and summarise it.

    Raises:
        LoraError: not a readable LoRA file in a known layout.
    """
    from refiners_lora.formats import _weight_file, parse_lora, read_lora_file

    file = _weight_file(Path(path))
    tensors, metadata = read_lora_file(file)
    parsed = parse_lora(tensors, metadata)
    header = read_lora_metadata(metadata)
    components: dict[str, int] = {}
    for entry in parsed.layers:
        components[entry.component] = components.get(entry.component, 0) + 1
    ranks = sorted({rank for entry in parsed.layers if (rank := _rank(entry)) is not None})
    alphas = sorted({entry.alpha for entry in parsed.layers if entry.alpha is not None})
    return LoraSummary(
        file=str(file),
        format=parsed.format,
        algorithms=sorted({_algorithm(entry) for entry in parsed.layers}),
        ranks=ranks,
        alphas=alphas,
        base_model=header.base_model,
        components=components,
        trigger_words=header.trigger_words,
        size_bytes=file.stat().st_size,
        parameters=sum(tensor.numel() for tensor in tensors.values()),
        layers=len(parsed.layers),
        title=header.title,
        unknown_keys=list(parsed.invalid_keys),
    )
