"""From a parsed file entry to the weight delta of its algorithm."""

from __future__ import annotations

import torch
from torch import nn

from refiners_lora.deltas.base import WeightDelta, check_tensors
from refiners_lora.deltas.boft import BoftDelta
from refiners_lora.deltas.dora import DoraDelta
from refiners_lora.deltas.full import FullDelta
from refiners_lora.deltas.glora import GloraDelta
from refiners_lora.deltas.ia3 import Ia3Delta
from refiners_lora.deltas.loha import LohaDelta
from refiners_lora.deltas.lokr import LokrDelta
from refiners_lora.deltas.norm import NormDelta
from refiners_lora.deltas.oft import OftDelta
from refiners_lora.deltas.peft_boft import PeftBoftDelta
from refiners_lora.deltas.peft_oft import PeftOftDelta
from refiners_lora.errors import LoraError
from refiners_lora.formats.common import DeltaWeights, LoraWeights
from refiners_lora.layers import lora_from_weights

IMPLEMENTED = ("lora", "loha", "lokr", "full", "ia3", "oft", "boft", "glora", "norm", "peft_oft", "peft_boft")
MAGNITUDES = ("dora_scale", "lora_magnitude_vector")


def _core(target: nn.Module, entry: DeltaWeights, tensors: dict[str, torch.Tensor], scale: float) -> WeightDelta:
    algorithm = entry.algorithm
    if algorithm == "lora":
        if not {"lora_down.weight", "lora_up.weight"} <= set(tensors):
            raise LoraError("a LoRA layer needs both lora_down.weight and lora_up.weight")
        mid = tensors.get("lora_mid.weight")
        return lora_from_weights(
            target, tensors["lora_down.weight"], tensors["lora_up.weight"], entry.alpha, scale, mid
        )
    if algorithm == "loha":
        return LohaDelta(target, tensors, entry.alpha, scale)
    if algorithm == "lokr":
        delta = LokrDelta(target, tensors, entry.alpha, scale)
        if entry.convention == "peft":
            # PEFT scales every LoKr by alpha / r, whole factors included
            rank = entry.rank or delta.rank
            delta.factor = 1.0 if entry.alpha is None or rank is None else entry.alpha / rank
            delta.peft_convention, delta.peft_rank = True, rank
        return delta
    if algorithm == "full":
        return FullDelta(target, tensors["diff"], tensors.get("diff_b"), scale)
    if algorithm == "ia3":
        if "weight" not in tensors:
            raise LoraError("(IA)^3 needs weight")
        on_input = bool(tensors["on_input"].item()) if "on_input" in tensors else False
        return Ia3Delta(target, tensors["weight"], on_input, scale)
    if algorithm == "oft":
        if "oft_blocks" not in tensors:
            raise LoraError("OFT needs oft_blocks")
        return OftDelta(target, tensors["oft_blocks"], tensors.get("rescale"), entry.alpha, scale)
    if algorithm == "boft":
        if "oft_blocks" not in tensors:
            raise LoraError("BOFT needs oft_blocks")
        return BoftDelta(target, tensors["oft_blocks"], tensors.get("rescale"), entry.alpha, scale)
    if algorithm == "peft_oft":
        return PeftOftDelta(target, tensors["oft_R"], entry.neumann_terms, scale)
    if algorithm == "peft_boft":
        if not {"boft_R", "boft_s"} <= set(tensors):
            raise LoraError("PEFT BOFT needs both boft_R and boft_s")
        return PeftBoftDelta(target, tensors["boft_R"], tensors["boft_s"], scale)
    if algorithm == "norm":
        if "w_norm" not in tensors:
            raise LoraError("a norm delta needs w_norm")
        return NormDelta(target, tensors["w_norm"], tensors.get("b_norm"), scale)
    if algorithm == "glora":
        return GloraDelta(target, tensors, entry.alpha, scale)
    raise LoraError(f"the {algorithm} algorithm is not implemented (implemented: {', '.join(IMPLEMENTED)})")


def build_delta(target: nn.Module, entry: LoraWeights | DeltaWeights, scale: float = 1.0) -> WeightDelta:
    """The weight delta ``entry`` describes, for ``target`` (a torch Linear or Conv2d).

    Raises:
        LoraError: NaN or infinite values, an algorithm not implemented, tensors that do not fit.
    """
    if isinstance(entry, LoraWeights):
        check_tensors({"lora_down": entry.down, "lora_up": entry.up})
        return lora_from_weights(target, entry.down, entry.up, entry.alpha, scale)
    check_tensors(entry.tensors)
    tensors = {key: value for key, value in entry.tensors.items() if key not in MAGNITUDES}
    magnitudes = [key for key in MAGNITUDES if key in entry.tensors]
    if not magnitudes:
        return _core(target, entry, tensors, scale)
    if entry.algorithm not in ("lora", "loha", "lokr"):
        raise LoraError(f"a DoRA magnitude on a {entry.algorithm} layer is not supported")
    inner = _core(target, entry, tensors, 1.0)
    convention = "peft" if magnitudes[0] == "lora_magnitude_vector" else "kohya"
    return DoraDelta(inner, entry.tensors[magnitudes[0]], convention, scale)
