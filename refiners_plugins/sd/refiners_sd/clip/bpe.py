"""CLIP's byte-pair-encoding vocabulary, built from the merges file bundled with refiners-sd (no download).

The merges file (``refiners_sd/data/bpe_simple_vocab_16e6.txt.gz``, MIT, see ``data/NOTICE.md``) holds the
merge rules; CLIP's 49,408-token vocabulary is derived from it: the 256 byte symbols, the same with the
end-of-word marker ``</w>``, one token per merge rule used (48,894), then ``<|startoftext|>`` and
``<|endoftext|>``.
"""

from __future__ import annotations

import gzip
import hashlib
from functools import lru_cache
from importlib import resources
from pathlib import Path

__all__ = ["BPE_MERGES_SHA256", "VOCAB_SIZE", "bundled_merges_path", "clip_bpe_vocabulary", "write_tokenizer_files"]

BPE_MERGES_FILE = "bpe_simple_vocab_16e6.txt.gz"
BPE_MERGES_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
VOCAB_SIZE = 49408
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
_MERGE_COUNT = VOCAB_SIZE - 2 * 256 - 2


def bundled_merges_path() -> Path:
    """Where the bundled ``bpe_simple_vocab_16e6.txt.gz`` lies inside the installed package."""
    return Path(str(resources.files("refiners_sd") / "data" / BPE_MERGES_FILE))


def _byte_symbols() -> list[str]:
    """The printable stand-in of each byte, in vocabulary order: printable Latin-1 bytes as themselves, the
    other bytes shifted past 255 (so that no token holds whitespace or control characters)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in symbols:
            symbols[byte] = chr(256 + shifted)
            shifted += 1
    return [symbols[byte] for byte in printable] + [symbols[byte] for byte in range(256) if byte not in printable]


@lru_cache(maxsize=1)
def clip_bpe_vocabulary() -> tuple[dict[str, int], list[str]]:
    """``(vocabulary {token: id}, merges ["a b", ...])`` of CLIP's tokenizer, from the bundled merges file.

    Raises:
        RuntimeError: the bundled file is missing or altered (its sha256 differs from the recorded one).
    """
    path = bundled_merges_path()
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != BPE_MERGES_SHA256:
        raise RuntimeError(f"{path} is altered: sha256 {digest}, expected {BPE_MERGES_SHA256}")
    lines = gzip.decompress(data).decode("utf-8").split("\n")
    merges = lines[1 : 1 + _MERGE_COUNT]  # the first line is a version header
    symbols = _byte_symbols()
    tokens = symbols + [symbol + END_OF_WORD for symbol in symbols]
    tokens += ["".join(merge.split()) for merge in merges]
    tokens += [START_TOKEN, END_TOKEN]
    return {token: index for index, token in enumerate(tokens)}, merges


def write_tokenizer_files(folder: str | Path) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` (the layout of a tokenizer folder) from the bundled data."""
    import json

    vocabulary, merges = clip_bpe_vocabulary()
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    (target / "vocab.json").write_text(json.dumps(vocabulary, ensure_ascii=False), encoding="utf-8")
    (target / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return target
