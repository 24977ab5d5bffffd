"""CLIP text encoders as Chains: ``tokens [B, L] -> last hidden state [B, L, D]``.

Besides its output, a forward pass leaves in the ``"clip_text"`` context of its tree:
``tokens`` (the input ids), ``penultimate`` (transformers' ``hidden_states[-2]``, no final norm),
``pooled`` (the final-normed state of the end-of-text token) and, with a projection, ``text_embeds``.
:meth:`CLIPTextEncoder.encode` returns all of them at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from refiners_core import (
    Chain,
    Embedding,
    Identity,
    LayerNorm,
    Linear,
    Parallel,
    Passthrough,
    SetContext,
    Sum,
    UseContext,
)
from refiners_core.context import Contexts
from refiners_core.module import Module
from refiners_sd.clip.config import CLIP_TEXT_G, CLIP_TEXT_L, CLIPTextConfig
from refiners_sd.clip.transformer import CLIPTransformer, record_penultimate

__all__ = [
    "CLIPTextEncoder",
    "CLIPTextEncoderG",
    "CLIPTextEncoderL",
    "CLIPTextOutput",
    "EOSPooling",
    "Pooling",
    "PositionalEmbedding",
    "TextProjection",
    "TokenEmbedding",
    "TokenEncoder",
]

CLIP_TEXT_CONTEXT = "clip_text"


class TokenEmbedding(Embedding):
    """Token id lookup: ``[B, L] -> [B, L, D]``."""


class PositionalEmbedding(Embedding):
    """Learned position table; returns the first ``L`` rows for tokens of length ``L``: ``[B, L] -> [1, L, D]``."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        length = tokens.shape[-1]
        if length > self.num_embeddings:
            raise ValueError(f"sequence of {length} tokens is longer than the {self.num_embeddings} positions")
        return self.weight[:length].unsqueeze(0)


class TokenEncoder(Sum):
    """Token embedding plus position embedding."""

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        max_positions: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            TokenEmbedding(vocab_size, embedding_dim, device=device, dtype=dtype),
            PositionalEmbedding(max_positions, embedding_dim, device=device, dtype=dtype),
        )


class EOSPooling(Module):
    """Picks the hidden state of each sequence's end-of-text token: ``(hidden [B, L, D], tokens [B, L]) -> [B, D]``.

    Same rule as transformers: with the legacy ``eos_token_id == 2`` (the configs Stable Diffusion ships)
    the end-of-text token is the highest id, found with ``argmax``; otherwise it is the first position
    holding ``eos_token_id``.
    """

    def __init__(self, eos_token_id: int | None = 2) -> None:
        super().__init__()
        self.eos_token_id = eos_token_id

    def forward(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        ids = tokens.to(device=hidden.device, dtype=torch.int)
        if self.eos_token_id is None or self.eos_token_id == 2:
            positions = ids.argmax(dim=-1)
        else:
            positions = (ids == self.eos_token_id).int().argmax(dim=-1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), positions]

    def extra_repr(self) -> str:
        return f"eos_token_id={self.eos_token_id}"


class TextProjection(Linear):
    """``text_projection``: pooled state -> text embedding (no bias)."""


class Pooling(Passthrough):
    """Side branch storing ``pooled`` (and ``text_embeds`` when projected) in the context; passes its input on."""

    def __init__(
        self,
        embedding_dim: int,
        eos_token_id: int | None = 2,
        projection_dim: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        layers: list[Module] = [
            Parallel(Identity(), UseContext(CLIP_TEXT_CONTEXT, "tokens")),
            EOSPooling(eos_token_id),
            SetContext(CLIP_TEXT_CONTEXT, "pooled"),
        ]
        if projection_dim is not None:
            layers += [
                TextProjection(embedding_dim, projection_dim, bias=False, device=device, dtype=dtype),
                SetContext(CLIP_TEXT_CONTEXT, "text_embeds"),
            ]
        super().__init__(*layers)


@dataclass
class CLIPTextOutput:
    """Every output of a CLIP text encoder pass (transformers names in brackets).

    ``last_hidden_state`` [``last_hidden_state``], ``penultimate_hidden_state`` [``hidden_states[-2]``],
    ``pooled_output`` [``pooler_output``], ``text_embeds`` [``text_embeds``, ``None`` without projection].
    """

    last_hidden_state: torch.Tensor
    penultimate_hidden_state: torch.Tensor
    pooled_output: torch.Tensor
    text_embeds: torch.Tensor | None


class CLIPTextEncoder(Chain):
    """A CLIP text tower: ``tokens [B, L] -> last hidden state [B, L, D]`` (after the final layer norm).

    Build it from a :class:`CLIPTextConfig` (any size: tiny ones work) or load a transformers
    ``CLIPTextModel`` / ``CLIPTextModelWithProjection`` folder with :meth:`from_transformers`.
    """

    default_config: CLIPTextConfig = CLIP_TEXT_L

    def __init__(
        self,
        config: CLIPTextConfig | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.config = config = config or self.default_config
        transformer = CLIPTransformer.from_config(config, is_causal=True, device=device, dtype=dtype)
        super().__init__(
            SetContext(CLIP_TEXT_CONTEXT, "tokens"),
            TokenEncoder(
                config.vocab_size, config.hidden_size, config.max_position_embeddings, device=device, dtype=dtype
            ),
            transformer,
            LayerNorm(config.hidden_size, eps=config.layer_norm_eps, device=device, dtype=dtype),
            Pooling(
                config.hidden_size,
                eos_token_id=config.eos_token_id,
                projection_dim=config.projection_dim,
                device=device,
                dtype=dtype,
            ),
        )
        record_penultimate(transformer, CLIP_TEXT_CONTEXT)

    def init_context(self) -> Contexts:
        return {CLIP_TEXT_CONTEXT: {"tokens": None, "penultimate": None, "pooled": None, "text_embeds": None}}

    @property
    def transformer(self) -> CLIPTransformer:
        """The stack of transformer layers."""
        return self.ensure_find(CLIPTransformer)

    def encode(self, tokens: torch.Tensor) -> CLIPTextOutput:
        """Run the encoder once and collect every output (see :class:`CLIPTextOutput`)."""
        last = self(tokens)
        values = self.use_context(CLIP_TEXT_CONTEXT)
        return CLIPTextOutput(
            last_hidden_state=last,
            penultimate_hidden_state=values["penultimate"],
            pooled_output=values["pooled"],
            text_embeds=values["text_embeds"] if self.config.projection_dim is not None else None,
        )

    @classmethod
    def from_transformers(
        cls,
        path: str | Path,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> CLIPTextEncoder:
        """Load a transformers ``CLIPTextModel`` or ``CLIPTextModelWithProjection`` folder by name.

        The folder holds ``config.json`` and ``model.safetensors`` (or ``model.fp16.safetensors``).
        Weights are read straight to ``device`` and cast to ``dtype``; any missing or unexpected key
        raises :class:`~refiners_core.WeightsError` listing them.
        """
        from refiners_sd.clip.loading import load_text_encoder

        return load_text_encoder(cls, path, device=device, dtype=dtype)

    def save_transformers(self, path: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` in transformers' layout to the folder ``path``."""
        from refiners_sd.clip.saving import save_transformers

        return save_transformers(self, path)


class CLIPTextEncoderL(CLIPTextEncoder):
    """CLIP ViT-L/14 text encoder (Stable Diffusion 1.5 conditions on its last hidden state, ``[B, 77, 768]``)."""

    default_config = CLIP_TEXT_L


class CLIPTextEncoderG(CLIPTextEncoder):
    """OpenCLIP ViT-bigG/14 text encoder with projection (SDXL's second encoder, 1280 wide)."""

    default_config = CLIP_TEXT_G
