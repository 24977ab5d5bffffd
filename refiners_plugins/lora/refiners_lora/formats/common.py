"""The normalised form every LoRA file is parsed into, whatever its on-disk layout."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


@dataclass
class LoraWeights:
    """The LoRA of one target layer, as read from a file.

    Attributes:
        component: ``"unet"``, ``"text_encoder"`` or ``"text_encoder_2"``.
        name: the target's module name as written in the file: dotted (``down_blocks.0.resnets.0.conv1``)
            or, when ``underscored``, kohya style with every ``.`` turned into ``_``.
        down: ``(rank, in)`` or ``(rank, in, kh, kw)``.
        up: ``(out, rank)`` or ``(out, rank, 1, 1)``.
        alpha: the file's alpha (``None``: none given, which means ``alpha = rank``).
        keys: the file keys this entry was built from (for error messages).
        underscored: whether ``name`` uses kohya's ``_`` separators.
    """

    component: str
    name: str
    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None
    keys: tuple[str, ...]
    underscored: bool = False

    @property
    def rank(self) -> int:
        """The LoRA rank (rows of ``down``)."""
        return int(self.down.shape[0])


@dataclass
class ParsedLora:
    """A whole LoRA file in normalised form.

    Attributes:
        format: the detected layout (``kohya``, ``diffusers``, ``peft``, ``diffusers-old``, ``refiners``).
        layers: one entry per target layer.
        invalid_keys: keys that belong to no complete down/up pair (e.g. a ``lora_up`` without its
            ``lora_down``) or that the format does not know (DoRA scales, LyCORIS variants).
    """

    format: str
    layers: list[LoraWeights]
    invalid_keys: list[str] = field(default_factory=list)


class PairCollector:
    """Collects down, up and alpha tensors by ``(component, name)`` and pairs them up."""

    def __init__(self) -> None:
        self._parts: dict[tuple[str, str], dict[str, tuple[str, torch.Tensor]]] = {}

    def add(self, component: str, name: str, part: str, key: str, tensor: torch.Tensor) -> None:
        """Record ``tensor`` (file key ``key``) as the ``part`` (``down``/``up``/``alpha``) of a layer."""
        self._parts.setdefault((component, name), {})[part] = (key, tensor)

    def build(
        self, underscored: bool, default_alphas: dict[tuple[str, str], float] | None = None
    ) -> tuple[list[LoraWeights], list[str]]:
        """Return complete entries and the keys of incomplete ones."""
        layers: list[LoraWeights] = []
        invalid: list[str] = []
        for (component, name), parts in self._parts.items():
            keys = tuple(key for key, _ in parts.values())
            if "down" not in parts or "up" not in parts:
                invalid.extend(keys)
                continue
            alpha: float | None = None
            if "alpha" in parts:
                alpha = float(parts["alpha"][1].item())
            elif default_alphas is not None:
                alpha = default_alphas.get((component, name))
            layers.append(
                LoraWeights(component, name, parts["down"][1], parts["up"][1], alpha, keys, underscored=underscored)
            )
        return layers, invalid
