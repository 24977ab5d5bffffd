"""What a LoRA file's safetensors header says: kohya ``ss_*`` training metadata, ``modelspec.*`` and
the diffusers ``lora_adapter_metadata``. Importing this module never imports torch."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# substrings of base-model names written by trainers -> architecture names (checked in order)
_ARCHITECTURES = (
    ("stable-diffusion-xl", "sdxl"),
    ("sdxl", "sdxl"),
    ("sd_xl", "sdxl"),
    ("stable-diffusion-v1", "sd15"),
    ("sd_v1", "sd15"),
    ("sd1", "sd15"),
    ("stable-diffusion-v2", "sd2"),
    ("sd_v2", "sd2"),
    ("stable-diffusion-3", "sd3"),
    ("sd3", "sd3"),
    ("flux", "flux"),
)


def architecture_of(name: str) -> str:
    """The architecture name (``sd15``, ``sdxl``, ``sd2``, ``sd3``, ``flux``) a trainer's base-model string
    means; the string itself, lowercased, when it is none of those."""
    lowered = name.lower()
    for needle, architecture in _ARCHITECTURES:
        if needle in lowered:
            return architecture
    return lowered


def _json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


@dataclass
class LoraMetadata:
    """The header facts of a LoRA file.

    Attributes:
        base_model: the architecture it was trained for (``sd15``, ``sdxl``...), ``None`` when unsaid.
        base_model_source: the header key and value that said so.
        title: ``modelspec.title`` or ``ss_output_name``.
        network: the training network module (``networks.lora``, ``lycoris.kohya``...).
        algorithm: the LyCORIS ``algo`` network argument, if any.
        rank, alpha: ``ss_network_dim`` / ``ss_network_alpha`` or the PEFT config's ``r`` / alpha.
        trigger_words: tags by frequency (``ss_tag_frequency``), then ``modelspec.trigger_phrase``.
    """

    base_model: str | None = None
    base_model_source: str | None = None
    title: str | None = None
    network: str | None = None
    algorithm: str | None = None
    rank: str | None = None
    alpha: str | None = None
    trigger_words: list[str] = field(default_factory=list)


def _base_model(metadata: Mapping[str, str]) -> tuple[str | None, str | None]:
    architecture = metadata.get("modelspec.architecture")
    if architecture:
        return architecture_of(architecture.split("/")[0]), f"modelspec.architecture={architecture}"
    version = metadata.get("ss_base_model_version")
    if version:
        return architecture_of(version), f"ss_base_model_version={version}"
    if metadata.get("ss_sd_model_name") and metadata.get("ss_v2") == "True":
        return "sd2", "ss_v2=True"
    return None, None


def _trigger_words(metadata: Mapping[str, str], limit: int = 20) -> list[str]:
    counts: dict[str, int] = {}
    frequencies = _json(metadata.get("ss_tag_frequency"))
    if isinstance(frequencies, dict):
        for tags in frequencies.values():
            if isinstance(tags, dict):
                for tag, count in tags.items():
                    if isinstance(count, int | float):
                        counts[str(tag).strip()] = counts.get(str(tag).strip(), 0) + int(count)
    words = [tag for tag, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])) if tag][:limit]
    phrase = metadata.get("modelspec.trigger_phrase")
    if phrase:
        words += [word.strip() for word in re.split(r"[,\n]", phrase) if word.strip() and word.strip() not in words]
    return words


def read_lora_metadata(metadata: Mapping[str, str]) -> LoraMetadata:
    """Parse a safetensors header (malformed JSON values are ignored, never fatal here)."""
    base_model, source = _base_model(metadata)
    args = _json(metadata.get("ss_network_args"))
    algorithm = args.get("algo") if isinstance(args, dict) else None
    peft = _json(metadata.get("lora_adapter_metadata"))
    rank, alpha = metadata.get("ss_network_dim"), metadata.get("ss_network_alpha")
    if isinstance(peft, dict):
        rank = rank or _first(peft, "r")
        alpha = alpha or _first(peft, "lora_alpha") or _first(peft, "alpha")
    return LoraMetadata(
        base_model=base_model,
        base_model_source=source,
        title=metadata.get("modelspec.title") or metadata.get("ss_output_name"),
        network=metadata.get("ss_network_module"),
        algorithm=str(algorithm) if algorithm else None,
        rank=None if rank is None else str(rank),
        alpha=None if alpha is None else str(alpha),
        trigger_words=_trigger_words(metadata),
    )


def _first(config: Mapping[str, Any], field_name: str) -> Any:
    if field_name in config:
        return config[field_name]
    for key, value in config.items():
        if key.endswith(f".{field_name}"):
            return value
    return None
