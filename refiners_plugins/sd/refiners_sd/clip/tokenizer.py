"""CLIP tokenization to fixed-length id tensors, through transformers' ``CLIPTokenizer``.

transformers is imported on first use only, so the encoders work without it when given token ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["CLIPTokenizer"]

DEFAULT_MAX_LENGTH = 77
# transformers puts a huge sentinel in model_max_length when the files do not set it.
_UNSET_MAX_LENGTH = 1_000_000


class CLIPTokenizer:
    """Text -> ``LongTensor [B, max_length]``: ``<start> tokens <end> pad...``, truncated so that ``<end>`` stays.

    The padding token comes from the tokenizer files: ``<|endoftext|>`` for Stable Diffusion's tokenizer,
    ``!`` for SDXL's second tokenizer.
    """

    def __init__(self, tokenizer: Any, max_length: int | None = None) -> None:
        self._tokenizer = tokenizer
        self._build: Callable[[], Any] | None = None
        model_max = int(getattr(tokenizer, "model_max_length", _UNSET_MAX_LENGTH))
        self.max_length = max_length or (model_max if model_max < _UNSET_MAX_LENGTH else DEFAULT_MAX_LENGTH)

    @property
    def tokenizer(self) -> Any:
        """The transformers tokenizer (a bundled one is built on first use: model loading does not wait for it)."""
        if self._tokenizer is None and self._build is not None:
            self._tokenizer, self._build = self._build(), None
        return self._tokenizer

    @classmethod
    def from_pretrained(cls, folder: str | Path, max_length: int | None = None) -> CLIPTokenizer:
        """Load a tokenizer folder (``vocab.json`` + ``merges.txt``, optionally its config and special tokens)."""
        from transformers import CLIPTokenizer as TransformersCLIPTokenizer

        return cls(TransformersCLIPTokenizer.from_pretrained(str(folder)), max_length=max_length)

    @classmethod
    def bundled(cls, pad_token: str = "<|endoftext|>", max_length: int = DEFAULT_MAX_LENGTH) -> CLIPTokenizer:
        """CLIP's tokenizer built from the merges bundled with refiners-sd (no tokenizer folder, no network).

        ``pad_token``: ``<|endoftext|>`` for Stable Diffusion 1.x and SDXL's first tokenizer, ``!`` for SDXL's
        second one. Tokenizes exactly as transformers' ``CLIPTokenizer`` loaded from the same merges. The
        vocabulary (49,408 tokens) is built on first use.
        """
        tokenizer = cls(None, max_length=max_length)
        tokenizer._build = lambda: _bundled_tokenizer(pad_token)
        return tokenizer

    @property
    def pad_token_id(self) -> int:
        """Id of the padding token."""
        return int(self.tokenizer.pad_token_id)

    @property
    def bos_token_id(self) -> int:
        """Id of ``<|startoftext|>``."""
        return int(self.tokenizer.bos_token_id)

    @property
    def eos_token_id(self) -> int:
        """Id of ``<|endoftext|>``."""
        return int(self.tokenizer.eos_token_id)

    def __call__(self, text: str | Sequence[str]) -> torch.Tensor:
        """Token ids of ``text`` (one string or a batch), shape ``[B, max_length]``, dtype int64."""
        batch = [text] if isinstance(text, str) else list(text)
        encoded = self.tokenizer(
            batch, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        return encoded["input_ids"].to(torch.int64)

    def __repr__(self) -> str:
        if self._tokenizer is None:
            return f"CLIPTokenizer(max_length={self.max_length}, bundled, not built yet)"
        return f"CLIPTokenizer(max_length={self.max_length}, pad_token={self.tokenizer.pad_token!r})"


def _bundled_tokenizer(pad_token: str) -> Any:
    from transformers import CLIPTokenizer as TransformersCLIPTokenizer

    from refiners_sd.clip.bpe import clip_bpe_vocabulary

    vocabulary, merges = clip_bpe_vocabulary()
    pairs = [tuple(merge.split(" ", 1)) for merge in merges]
    # the tokenizers backend wants (left, right) pairs, whatever the annotation says
    return TransformersCLIPTokenizer(vocab=dict(vocabulary), merges=pairs, pad_token=pad_token)  # type: ignore[arg-type]
