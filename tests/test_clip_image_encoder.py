"""CLIPImageEncoder (refiners-ip-adapter) against transformers' CLIPVisionModelWithProjection on tiny configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from refiners_ip_adapter import CLIPImageConfig, CLIPImageEncoder

from refiners_core import WeightsError, load_tensors, save_state_dict

TOLERANCE = 1e-4

TINY_VISION: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "image_size": 30,
    "patch_size": 6,
    "projection_dim": 16,
    "hidden_act": "gelu",
}


def make_tiny_vision(directory: Path, overrides: dict[str, Any] | None = None, seed: int = 0) -> tuple[Any, Path]:
    """A random transformers ``CLIPVisionModelWithProjection`` saved with ``save_pretrained``."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**{**TINY_VISION, **(overrides or {})})).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    path = directory / "image_encoder"
    model.save_pretrained(path)
    return model, path


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("hidden_act", ["gelu", "quick_gelu"])
def test_outputs_match_transformers(tmp_path: Path, hidden_act: str) -> None:
    model, path = make_tiny_vision(tmp_path, {"hidden_act": hidden_act})
    encoder = CLIPImageEncoder.from_transformers(path)
    pixels = torch.randn(3, 3, 30, 30, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(pixels, output_hidden_states=True)
        ours = encoder.encode(pixels)
    assert max_diff(ours.image_embeds, expected.image_embeds) < TOLERANCE
    assert max_diff(ours.penultimate_hidden_state, expected.hidden_states[-2]) < TOLERANCE
    assert max_diff(ours.last_hidden_state, expected.last_hidden_state) < TOLERANCE
    assert torch.equal(encoder(pixels), ours.image_embeds)


def test_single_file_with_explicit_config_and_dtype(tmp_path: Path) -> None:
    model, path = make_tiny_vision(tmp_path)
    single = tmp_path / "elsewhere" / "vit.safetensors"
    save_state_dict(load_tensors(path / "model.safetensors"), single)
    with pytest.raises(WeightsError, match="config.json"):
        CLIPImageEncoder.from_transformers(single)
    config = json.loads((path / "config.json").read_text())
    encoder = CLIPImageEncoder.from_transformers(single, config=config, dtype=torch.float64)
    assert encoder.dtype == torch.float64 and encoder.config == CLIPImageConfig.from_dict(config)
    pixels = torch.randn(2, 3, 30, 30, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert max_diff(encoder(pixels.double()), model(pixels).image_embeds) < TOLERANCE


def test_every_key_is_accounted_for(tmp_path: Path) -> None:
    _, path = make_tiny_vision(tmp_path)
    state = load_tensors(path / "model.safetensors")
    extra = {**state, "vision_model.encoder.layers.9.mlp.fc1.weight": torch.zeros(1)}
    save_state_dict(extra, tmp_path / "extra" / "model.safetensors")
    (tmp_path / "extra" / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(WeightsError, match=r"unexpected keys: vision_model\.encoder\.layers\.9\.mlp\.fc1\.weight"):
        CLIPImageEncoder.from_transformers(tmp_path / "extra")
    missing = {key: value for key, value in state.items() if key != "visual_projection.weight"}
    save_state_dict(missing, tmp_path / "missing" / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "missing" / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(WeightsError, match=r"missing keys: visual_projection\.weight"):
        CLIPImageEncoder.from_transformers(tmp_path / "missing")
    wrong = {**json.loads((path / "config.json").read_text()), "projection_dim": 8}
    with pytest.raises(WeightsError, match="wrong config.json"):
        CLIPImageEncoder.from_transformers(path / "model.safetensors", config=wrong)


def test_preprocessing_matches_clip_image_processor() -> None:
    from PIL import Image
    from transformers import CLIPImageProcessor

    encoder = CLIPImageEncoder(CLIPImageConfig(**{**TINY_VISION, "image_size": 224, "patch_size": 14}))
    generator = torch.Generator().manual_seed(3)
    array = (torch.rand(300, 260, 3, generator=generator) * 255).to(torch.uint8).numpy()
    image = Image.fromarray(array)
    expected = CLIPImageProcessor()(images=image, return_tensors="pt")["pixel_values"]
    pixels = encoder.preprocess(image)
    assert pixels.shape == expected.shape == (1, 3, 224, 224)
    # bicubic resampling implementations differ slightly: compare in pixel units (1/255 ~ 0.015 after std)
    assert (pixels - expected).abs().mean().item() < 0.02
    tensors = encoder.preprocess([torch.rand(3, 64, 80, generator=generator), torch.rand(2, 3, 224, 224)])
    assert tensors.shape == (3, 3, 224, 224)
    with pytest.raises(TypeError, match="PIL images or tensors"):
        encoder.preprocess(["not an image"])  # type: ignore[list-item]


def test_tree_reads_like_the_model() -> None:
    encoder = CLIPImageEncoder(CLIPImageConfig(**TINY_VISION), device="meta")
    assert encoder.children_names == [
        "ViTEmbedding",
        "LayerNorm",
        "CLIPTransformer",
        "SetContext",
        "ClassTokenProjection",
    ]
    assert "ClassToken" in repr(encoder) and "VisualProjection" in repr(encoder)


def test_save_transformers_round_trips_through_transformers(tmp_path: Path) -> None:
    from transformers import CLIPVisionModelWithProjection

    model, path = make_tiny_vision(tmp_path, {"hidden_act": "quick_gelu"})
    encoder = CLIPImageEncoder.from_transformers(path)
    saved = encoder.save_transformers(tmp_path / "saved")
    assert sorted(item.name for item in saved.iterdir()) == ["config.json", "model.safetensors"]
    reloaded = CLIPVisionModelWithProjection.from_pretrained(saved).eval()
    ours = CLIPImageEncoder.from_transformers(saved)
    pixels = torch.randn(2, 3, 30, 30, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(pixels).image_embeds
        assert max_diff(reloaded(pixels).image_embeds, expected) < TOLERANCE
        assert torch.equal(ours(pixels), encoder(pixels))


def test_weights_without_config_are_recognised_only_as_a_known_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from refiners_ip_adapter.image_encoder import config as known

    model, path = make_tiny_vision(tmp_path)
    single = tmp_path / "alone" / "model.safetensors"
    save_state_dict(load_tensors(path / "model.safetensors"), single)
    with pytest.raises(WeightsError, match="match no known CLIP vision size"):
        CLIPImageEncoder.from_transformers(single)
    tiny = CLIPImageConfig.from_dict(json.loads((path / "config.json").read_text()))
    monkeypatch.setattr(known, "KNOWN_CONFIGS", (known.CLIP_VIT_H, tiny))
    encoder = CLIPImageEncoder.from_transformers(single)
    assert encoder.config == tiny
    pixels = torch.randn(1, 3, 30, 30, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert max_diff(encoder(pixels), model(pixels).image_embeds) < TOLERANCE
    # an explicit config is never replaced by a recognised one
    with pytest.raises(WeightsError, match="no config.json"):
        CLIPImageEncoder.from_transformers(single, config=tmp_path / "missing.json")


def test_real_vit_h_shapes_are_recognised() -> None:
    from refiners_ip_adapter.image_encoder.config import CLIP_VIT_H, known_config_for
    from refiners_ip_adapter.image_encoder.loading import image_encoder_module_map

    from refiners_core import state_dict_by_module_map

    encoder = CLIPImageEncoder(CLIP_VIT_H, device="meta")  # the sd15/clip-image-encoder-h catalog file's layout
    shapes = {
        key: tuple(value.shape) for key, value in state_dict_by_module_map(image_encoder_module_map(encoder)).items()
    }
    assert known_config_for(shapes) == CLIP_VIT_H
    shapes["visual_projection.weight"] = (768, 1280)
    assert known_config_for(shapes) is None
