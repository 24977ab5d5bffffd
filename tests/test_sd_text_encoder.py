"""Parity of refiners-sd's CLIP text encoders and tokenizer with transformers, on tiny random models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from refiners_sd.clip import (
    CLIPTextEncoder,
    CLIPTextEncoderG,
    CLIPTextEncoderL,
    CLIPTokenizer,
    CLIPTransformer,
    DoubleTextEncoder,
    TransformerLayer,
)
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig as TransformersCLIPTextConfig
from transformers import CLIPTextModel, CLIPTextModelWithProjection
from transformers import CLIPTokenizer as TransformersCLIPTokenizer

from refiners_core import WeightsError

TOLERANCE = 1e-4
VOCAB = 1000


def tiny_config(**overrides: object) -> TransformersCLIPTextConfig:
    fields: dict[str, object] = {
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "eos_token_id": 2,
        "projection_dim": 24,
    }
    fields.update(overrides)
    return TransformersCLIPTextConfig(**fields)


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Noise on every parameter, so that swapped norms or biases cannot hide behind default inits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def save_model(model: torch.nn.Module, folder: Path) -> Path:
    model.save_pretrained(folder)  # type: ignore[operator]
    return folder


def make_tokens(eos_token_id: int, batch: int = 3, length: int = 77, seed: int = 0) -> torch.Tensor:
    """Random ids below the end-of-text id, which comes at a different place in each row, then padding with it."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB - 1, (batch, length), generator=generator)
    for row in range(batch):
        tokens[row, 5 + 7 * row :] = eos_token_id
    return tokens


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize(
    ("layers", "hidden_act", "eos_token_id"),
    [(3, "quick_gelu", 2), (2, "gelu", VOCAB - 1), (1, "quick_gelu", 2)],
)
def test_text_model_parity(tmp_path: Path, layers: int, hidden_act: str, eos_token_id: int) -> None:
    config = tiny_config(num_hidden_layers=layers, hidden_act=hidden_act, eos_token_id=eos_token_id)
    reference = perturbed(CLIPTextModel(config), seed=layers)
    folder = save_model(reference, tmp_path / "text_encoder")
    encoder = CLIPTextEncoderL.from_transformers(folder)
    tokens = make_tokens(VOCAB - 1)

    with torch.no_grad():
        expected = reference(tokens, output_hidden_states=True)
        ours = encoder.encode(tokens)

    assert encoder.config.projection_dim is None and ours.text_embeds is None
    assert (ours.last_hidden_state - expected.last_hidden_state).abs().max() < TOLERANCE
    assert (ours.penultimate_hidden_state - expected.hidden_states[-2]).abs().max() < TOLERANCE
    assert (ours.pooled_output - expected.pooler_output).abs().max() < TOLERANCE
    with torch.no_grad():
        assert torch.equal(encoder(tokens), ours.last_hidden_state)


def test_text_model_with_projection_parity(tmp_path: Path) -> None:
    config = tiny_config(hidden_act="gelu", eos_token_id=VOCAB - 1)
    reference = perturbed(CLIPTextModelWithProjection(config), seed=7)
    folder = save_model(reference, tmp_path / "text_encoder_2")
    encoder = CLIPTextEncoderG.from_transformers(folder)
    tokens = make_tokens(VOCAB - 1, seed=1)

    with torch.no_grad():
        expected = reference(tokens, output_hidden_states=True)
        pooled = reference.text_model(tokens).pooler_output
        ours = encoder.encode(tokens)

    assert ours.text_embeds is not None and ours.text_embeds.shape == (3, 24)
    assert (ours.last_hidden_state - expected.last_hidden_state).abs().max() < TOLERANCE
    assert (ours.penultimate_hidden_state - expected.hidden_states[-2]).abs().max() < TOLERANCE
    assert (ours.pooled_output - pooled).abs().max() < TOLERANCE
    assert (ours.text_embeds - expected.text_embeds).abs().max() < TOLERANCE


def test_legacy_prefixed_checkpoint_with_position_ids(tmp_path: Path) -> None:
    """Checkpoints saved by transformers 4 carry ``text_model.`` and sometimes ``position_ids``; both load."""
    reference = perturbed(CLIPTextModel(tiny_config(num_hidden_layers=2)), seed=3)
    folder = save_model(reference, tmp_path / "bare")
    state = load_file(folder / "model.safetensors")
    legacy = {f"text_model.{key}": value for key, value in state.items()}
    legacy["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    (folder / "model.safetensors").unlink()
    save_file(legacy, folder / "model.fp16.safetensors")

    encoder = CLIPTextEncoder.from_transformers(folder)
    tokens = make_tokens(VOCAB - 1, seed=2)
    with torch.no_grad():
        assert (encoder(tokens) - reference(tokens).last_hidden_state).abs().max() < TOLERANCE


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path) -> None:
    folder = save_model(perturbed(CLIPTextModel(tiny_config(num_hidden_layers=2)), seed=4), tmp_path / "broken")
    state = load_file(folder / "model.safetensors")
    del state["encoder.layers.1.mlp.fc2.bias"]
    state["encoder.layers.1.mlp.extra.weight"] = torch.zeros(1)
    save_file(state, folder / "model.safetensors")

    with pytest.raises(WeightsError) as error:
        CLIPTextEncoder.from_transformers(folder)
    message = str(error.value)
    assert "missing keys: encoder.layers.1.mlp.fc2.bias" in message
    assert "unexpected keys: encoder.layers.1.mlp.extra.weight" in message


def test_load_to_dtype(tmp_path: Path) -> None:
    folder = save_model(perturbed(CLIPTextModel(tiny_config(num_hidden_layers=1)), seed=5), tmp_path / "half")
    encoder = CLIPTextEncoder.from_transformers(folder, dtype=torch.bfloat16)
    assert {parameter.dtype for parameter in encoder.parameters()} == {torch.bfloat16}
    assert encoder(make_tokens(VOCAB - 1)).dtype == torch.bfloat16


def test_double_text_encoder_parity(tmp_path: Path) -> None:
    reference_l = perturbed(CLIPTextModel(tiny_config(hidden_size=16, num_attention_heads=2)), seed=10)
    reference_g = perturbed(
        CLIPTextModelWithProjection(tiny_config(num_hidden_layers=2, hidden_act="gelu", projection_dim=32)), seed=11
    )
    save_model(reference_l, tmp_path / "sdxl" / "text_encoder")
    save_model(reference_g, tmp_path / "sdxl" / "text_encoder_2")
    double = DoubleTextEncoder.from_diffusers(tmp_path / "sdxl")
    tokens_l = make_tokens(VOCAB - 1, seed=3)
    tokens_g = make_tokens(VOCAB - 1, seed=4)

    with torch.no_grad():
        embedding, pooled = double(tokens_l, tokens_g)
        hidden_l = reference_l(tokens_l, output_hidden_states=True).hidden_states[-2]
        out_g = reference_g(tokens_g, output_hidden_states=True)

    assert embedding.shape == (3, 77, 16 + 32)
    assert (embedding - torch.cat([hidden_l, out_g.hidden_states[-2]], dim=-1)).abs().max() < TOLERANCE
    assert (pooled - out_g.text_embeds).abs().max() < TOLERANCE
    assert isinstance(double.text_encoder_l, CLIPTextEncoderL)
    assert isinstance(double.text_encoder_g, CLIPTextEncoderG)


def test_transformer_layers_are_reusable_without_causal_mask() -> None:
    """The vision tower's building block: a non-causal CLIPTransformer of TransformerLayers."""
    transformer = CLIPTransformer(2, embedding_dim=32, num_heads=4, feedforward_dim=64, is_causal=False)
    assert len(transformer.transformer_layers) == 2
    assert all(isinstance(layer, TransformerLayer) for layer in transformer)
    x = torch.randn(2, 5, 32)
    # non-causal: the first position sees the last one
    changed = x.clone()
    changed[:, -1] = torch.randn(2, 32)
    assert not torch.allclose(transformer(x)[:, 0], transformer(changed)[:, 0])
    causal = CLIPTransformer(2, embedding_dim=32, num_heads=4, feedforward_dim=64, is_causal=True)
    assert torch.allclose(causal(x)[:, 0], causal(changed)[:, 0])


def write_tiny_tokenizer(folder: Path, pad_token: str | None = None) -> Path:
    """A byte-level BPE vocabulary of letters and punctuation with a few merges, in CLIP's file layout."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list("abcdefghijklmnopqrstuvwxyz!.,")
    vocab: dict[str, int] = {}
    for symbol in symbols + [f"{symbol}</w>" for symbol in symbols]:
        vocab[symbol] = len(vocab)
    merges = ["c a", "ca t</w>", "d o", "do g</w>", "p h", "ph o", "pho t", "phot o</w>"]
    for merge in merges:
        vocab[merge.replace(" ", "")] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config: dict[str, object] = {"model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}
    if pad_token is not None:
        config["pad_token"] = pad_token
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


@pytest.mark.parametrize("pad_token", [None, "!"])
def test_tokenizer_matches_transformers(tmp_path: Path, pad_token: str | None) -> None:
    folder = write_tiny_tokenizer(tmp_path / "tokenizer", pad_token=pad_token)
    texts = ["a photo of a cat", "A DOG, a cat!", "zebra " * 100]
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    reference = TransformersCLIPTokenizer.from_pretrained(str(folder))

    ids = tokenizer(texts)
    expected = reference(texts, padding="max_length", max_length=77, truncation=True).input_ids

    assert ids.dtype == torch.int64 and ids.shape == (3, 77)
    assert ids.tolist() == expected
    assert ids[0, 0].item() == tokenizer.bos_token_id
    assert ids[2, -1].item() == tokenizer.eos_token_id  # truncation keeps the end-of-text token
    assert ids[0, -1].item() == tokenizer.pad_token_id
    if pad_token == "!":
        assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert torch.equal(tokenizer("a photo of a cat"), ids[:1])
