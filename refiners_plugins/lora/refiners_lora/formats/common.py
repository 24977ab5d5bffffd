"""The normalised form every LoRA file is parsed into, whatever its on-disk layout."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from refiners_lora.deltas.base import scalar_alpha

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
TRANSFORMERS_WRAPPER = "text_model."
"""transformers releases differ on whether text models wrap their layers in ``text_model``: files have both."""


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
        layers: one entry per target layer: :class:`LoraWeights` for plain LoRA pairs,
            :class:`DeltaWeights` for every other algorithm.
        invalid_keys: keys that belong to no complete down/up pair (e.g. a ``lora_up`` without its
            ``lora_down``) or that the format does not know (DoRA scales, LyCORIS variants).
    """

    format: str
    layers: Sequence[LoraWeights | DeltaWeights]
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
                alpha = scalar_alpha(parts["alpha"][0], parts["alpha"][1])
            elif default_alphas is not None:
                alpha = default_alphas.get((component, name))
            layers.append(
                LoraWeights(component, name, parts["down"][1], parts["up"][1], alpha, keys, underscored=underscored)
            )
        return layers, invalid


@dataclass
class DeltaWeights:
    """The change of one target layer by any algorithm other than a plain down/up LoRA, as read from a file.

    Attributes:
        component: ``"unet"``, ``"text_encoder"`` or ``"text_encoder_2"``.
        name: the target's module name as written in the file (see :class:`LoraWeights`).
        algorithm: ``lora`` (with a Tucker core or a DoRA magnitude), ``loha``, ``lokr``, ``full``,
            ``ia3``, ``oft``, ``boft``, ``glora``, ``norm``, ``peft_oft`` and ``peft_boft`` (PEFT's OFT and BOFT).
        tensors: the tensors by key suffix (``hada_w1_a``, ``lora_down.weight``, ``dora_scale``...),
            ``alpha`` excluded.
        alpha: the file's alpha, ``None`` when absent.
        keys: the file keys this entry was built from.
        underscored: whether ``name`` uses kohya's ``_`` separators.
        convention: ``lycoris`` (kohya / LyCORIS files) or ``peft`` (PEFT adapters: their own scaling).
        rank: the rank a PEFT config gives (``r`` / ``rank_pattern``), used where the tensors do not say.
        neumann_terms: for PEFT OFT, the terms of the Cayley-Neumann series (``None``: the exact Cayley).
    """

    component: str
    name: str
    algorithm: str
    tensors: dict[str, torch.Tensor]
    alpha: float | None
    keys: tuple[str, ...]
    underscored: bool = False
    convention: str = "lycoris"
    rank: int | None = None
    neumann_terms: int | None = None


# key suffix -> algorithm; a layer's suffixes must all belong to one algorithm (``alpha`` and
# ``dora_scale`` go with any)
ALGORITHM_SUFFIXES: dict[str, str] = {
    "lora_down.weight": "lora",
    "lora_up.weight": "lora",
    "lora_mid.weight": "lora",
    "hada_w1_a": "loha",
    "hada_w1_b": "loha",
    "hada_w2_a": "loha",
    "hada_w2_b": "loha",
    "hada_t1": "loha",
    "hada_t2": "loha",
    "lokr_w1": "lokr",
    "lokr_w1_a": "lokr",
    "lokr_w1_b": "lokr",
    "lokr_w2": "lokr",
    "lokr_w2_a": "lokr",
    "lokr_w2_b": "lokr",
    "lokr_t2": "lokr",
    "diff": "full",
    "diff_b": "full",
    "weight": "ia3",
    "on_input": "ia3",
    "oft_blocks": "oft",
    "rescale": "oft",
    "oft_diag": "oft",
    "a1.weight": "glora",
    "a2.weight": "glora",
    "b1.weight": "glora",
    "b2.weight": "glora",
    "bm.weight": "glora",
    "w_norm": "norm",
    "b_norm": "norm",
}
SHARED_SUFFIXES = ("alpha", "dora_scale")


def algorithm_of(suffixes: set[str], tensors: dict[str, torch.Tensor]) -> str | None:
    """The algorithm of a layer from its key suffixes, or ``None`` when they mix algorithms."""
    algorithms = {ALGORITHM_SUFFIXES[suffix] for suffix in suffixes if suffix in ALGORITHM_SUFFIXES}
    if len(algorithms) != 1:
        return None
    algorithm = algorithms.pop()
    if algorithm == "oft" and "oft_blocks" in tensors and tensors["oft_blocks"].dim() == 4:
        return "boft"
    return algorithm
