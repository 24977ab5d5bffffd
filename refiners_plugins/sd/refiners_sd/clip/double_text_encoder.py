"""SDXL's pair of text encoders: CLIP ViT-L and OpenCLIP ViT-bigG, read at their penultimate layer."""

from __future__ import annotations

from pathlib import Path

import torch

from refiners_core import Cat, Chain, Distribute, Identity, Parallel, UseContext
from refiners_sd.clip.text_encoder import CLIP_TEXT_CONTEXT, CLIPTextEncoder, CLIPTextEncoderG, CLIPTextEncoderL

__all__ = ["DoubleTextEncoder"]


class DoubleTextEncoder(Chain):
    """``(tokens_l, tokens_g) -> (text embedding [B, L, D_l + D_g], pooled text embeds [B, P])``.

    Each encoder contributes its penultimate hidden state (``hidden_states[-2]``, no final norm); they are
    concatenated on the feature dimension (768 + 1280 = 2048 for SDXL). The pooled output is bigG's
    projected end-of-text state (``text_embeds``, 1280 for SDXL), read from the context after bigG ran.
    """

    def __init__(
        self,
        text_encoder_l: CLIPTextEncoder | None = None,
        text_encoder_g: CLIPTextEncoder | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        encoder_l = text_encoder_l or CLIPTextEncoderL(device=device, dtype=dtype)
        encoder_g = text_encoder_g or CLIPTextEncoderG(device=device, dtype=dtype)
        if encoder_g.config.projection_dim is None:
            raise ValueError("the second text encoder of a DoubleTextEncoder needs a text projection")
        super().__init__(
            Distribute(
                Chain(encoder_l, UseContext(CLIP_TEXT_CONTEXT, "penultimate")),
                Chain(encoder_g, UseContext(CLIP_TEXT_CONTEXT, "penultimate")),
            ),
            Cat(dim=-1),
            Parallel(Identity(), UseContext(CLIP_TEXT_CONTEXT, "text_embeds")),
        )

    @property
    def text_encoder_l(self) -> CLIPTextEncoder:
        """The first encoder (CLIP ViT-L)."""
        return self.layer("Distribute.Chain_1.0", CLIPTextEncoder)

    @property
    def text_encoder_g(self) -> CLIPTextEncoder:
        """The second encoder (OpenCLIP ViT-bigG, with projection)."""
        return self.layer("Distribute.Chain_2.0", CLIPTextEncoder)

    @classmethod
    def from_transformers(
        cls,
        text_encoder_path: str | Path,
        text_encoder_2_path: str | Path,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> DoubleTextEncoder:
        """Load both encoders from transformers folders (an SDXL repo's ``text_encoder`` and ``text_encoder_2``)."""
        return cls(
            CLIPTextEncoderL.from_transformers(text_encoder_path, device=device, dtype=dtype),
            CLIPTextEncoderG.from_transformers(text_encoder_2_path, device=device, dtype=dtype),
        ).eval()

    @classmethod
    def from_diffusers(
        cls, path: str | Path, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> DoubleTextEncoder:
        """Load both encoders from an SDXL pipeline folder (``text_encoder/`` and ``text_encoder_2/``)."""
        root = Path(path)
        return cls.from_transformers(root / "text_encoder", root / "text_encoder_2", device=device, dtype=dtype)
