"""The pre-norm transformer encoder of CLIP, shared by the text tower and the vision tower.

A :class:`TransformerLayer` is two residual branches: ``LayerNorm -> SelfAttention`` and
``LayerNorm -> FeedForward``. A :class:`CLIPTransformer` is a plain Chain of such layers, so both
towers get the same tree (and the same weight mapping, see :func:`transformer_layer_map`):

- text tower: causal attention, ``hidden_act`` quick_gelu (ViT-L) or gelu (bigG);
- vision tower: ``CLIPTransformer(..., is_causal=False)`` after the patch/class/position embeddings and
  ``pre_layrnorm``; read ``hidden_states[-2]`` with :func:`record_penultimate`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from refiners_core import (
    ApproximateGeLU,
    Chain,
    GeLU,
    LayerNorm,
    Linear,
    Residual,
    SelfAttention,
    SetContext,
)
from refiners_core.module import Module

__all__ = [
    "CLIPTransformer",
    "clip_transformer_map",
    "FeedForward",
    "TransformerLayer",
    "activation_from_name",
    "record_penultimate",
    "transformer_layer_map",
]


def activation_from_name(name: str) -> Module:
    """The activation layer for a transformers ``hidden_act`` name (``quick_gelu``, ``gelu``, ``gelu_new``...)."""
    if name == "quick_gelu":
        return ApproximateGeLU()
    if name == "gelu":
        return GeLU()
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return GeLU(approximate="tanh")
    raise ValueError(f"unsupported CLIP hidden_act {name!r} (expected quick_gelu, gelu or gelu_new)")


class FeedForward(Chain):
    """``Linear(dim -> hidden) -> activation -> Linear(hidden -> dim)``: CLIP's MLP (``fc1``, ``fc2``)."""

    def __init__(
        self,
        embedding_dim: int,
        feedforward_dim: int,
        activation: str = "quick_gelu",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            Linear(embedding_dim, feedforward_dim, device=device, dtype=dtype),
            activation_from_name(activation),
            Linear(feedforward_dim, embedding_dim, device=device, dtype=dtype),
        )


class TransformerLayer(Chain):
    """One pre-norm encoder layer: ``x + SelfAttention(LayerNorm(x))`` then ``x + FeedForward(LayerNorm(x))``.

    Attention projections and the output projection all carry biases, as in CLIP.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        feedforward_dim: int,
        activation: str = "quick_gelu",
        layer_norm_eps: float = 1e-5,
        is_causal: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            Residual(
                LayerNorm(embedding_dim, eps=layer_norm_eps, device=device, dtype=dtype),
                SelfAttention(embedding_dim, num_heads=num_heads, is_causal=is_causal, device=device, dtype=dtype),
            ),
            Residual(
                LayerNorm(embedding_dim, eps=layer_norm_eps, device=device, dtype=dtype),
                FeedForward(embedding_dim, feedforward_dim, activation=activation, device=device, dtype=dtype),
            ),
        )


class CLIPTransformer(Chain):
    """``num_layers`` :class:`TransformerLayer` in a row: ``[B, L, D] -> [B, L, D]``."""

    def __init__(
        self,
        num_layers: int,
        embedding_dim: int,
        num_heads: int,
        feedforward_dim: int,
        activation: str = "quick_gelu",
        layer_norm_eps: float = 1e-5,
        is_causal: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            TransformerLayer(
                embedding_dim,
                num_heads,
                feedforward_dim,
                activation=activation,
                layer_norm_eps=layer_norm_eps,
                is_causal=is_causal,
                device=device,
                dtype=dtype,
            )
            for _ in range(num_layers)
        )

    @classmethod
    def from_config(
        cls,
        config: Any,
        is_causal: bool,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> CLIPTransformer:
        """Build from a CLIP text or vision config (``num_hidden_layers``, ``hidden_size``, ``num_attention_heads``,
        ``intermediate_size``, ``hidden_act``, ``layer_norm_eps``: the names transformers uses for both towers)."""
        return cls(
            num_layers=config.num_hidden_layers,
            embedding_dim=config.hidden_size,
            num_heads=config.num_attention_heads,
            feedforward_dim=config.intermediate_size,
            activation=config.hidden_act,
            layer_norm_eps=config.layer_norm_eps,
            is_causal=is_causal,
            device=device,
            dtype=dtype,
        )

    @property
    def transformer_layers(self) -> list[TransformerLayer]:
        """The layers in order (other children, such as a recording ``SetContext``, are skipped)."""
        return [layer for layer in self if isinstance(layer, TransformerLayer)]


def record_penultimate(transformer: CLIPTransformer, context: str, key: str = "penultimate") -> SetContext:
    """Insert a ``SetContext(context, key)`` right before the last layer of ``transformer``.

    After a forward pass, ``context[key]`` holds what transformers calls ``hidden_states[-2]`` (the input
    of the last layer). Layer names do not change, so weight keys stay the same. Returns the inserted layer.
    """
    last = transformer.transformer_layers[-1]
    recorder = SetContext(context, key)
    transformer.insert(transformer.children_names.index(transformer.name_of(last)), recorder)
    return recorder


def transformer_layer_map(prefix: str, layer: TransformerLayer) -> dict[str, nn.Module]:
    """Map the transformers module names of one ``CLIPEncoderLayer`` (under ``prefix``) to our leaves."""
    attention_branch, feedforward_branch = layer.layer(0, Chain), layer.layer(1, Chain)
    attention = attention_branch.layer("SelfAttention.Attention", Chain)
    q, k, v = attention.layer("Distribute", Chain)
    feedforward = feedforward_branch.layer("FeedForward", Chain)
    return {
        f"{prefix}.layer_norm1": attention_branch.layer("LayerNorm"),
        f"{prefix}.self_attn.q_proj": q,
        f"{prefix}.self_attn.k_proj": k,
        f"{prefix}.self_attn.v_proj": v,
        f"{prefix}.self_attn.out_proj": attention.layer("Linear"),
        f"{prefix}.layer_norm2": feedforward_branch.layer("LayerNorm"),
        f"{prefix}.mlp.fc1": feedforward.layer("Linear_1"),
        f"{prefix}.mlp.fc2": feedforward.layer("Linear_2"),
    }


def clip_transformer_map(prefix: str, transformer: CLIPTransformer) -> dict[str, nn.Module]:
    """Map transformers' ``{prefix}.{i}.*`` encoder layer names (``prefix`` like ``"encoder.layers"``) to our leaves."""
    mapping: dict[str, nn.Module] = {}
    for index, layer in enumerate(transformer.transformer_layers):
        mapping.update(transformer_layer_map(f"{prefix}.{index}", layer))
    return mapping
