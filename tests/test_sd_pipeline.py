"""Text-to-image parity: refiners-sd's StableDiffusion1/XL against diffusers' pipelines on tiny random parts.

Each test builds a tiny pipeline with diffusers and transformers, saves it with ``save_pretrained``, loads it
with our ``from_diffusers`` and compares the final latents (``output_type="latent"``) for the same prompt,
solver, steps, guidance and seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from refiners_sd.pipeline import StableDiffusion1, StableDiffusionXL, classifier_free_guidance, load_pipeline
from tiny_pipelines import compare, diffusers_latents, sd15_pipeline, sdxl_pipeline

SIZE = 64


@pytest.fixture(scope="module")
def sd1_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sd1")
    sd15_pipeline(root).save_pretrained(root / "pipeline")
    return root / "pipeline"


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sdxl")
    sdxl_pipeline(root).save_pretrained(root / "pipeline")
    return root / "pipeline"


SD1_CASES = [
    ("ddim", 3, 7.5, None),
    ("euler", 3, 5.0, "blurry"),
    ("dpm++2m", 3, 7.5, None),
    ("ddim", 2, 1.0, None),  # no guidance: one UNet call on the prompt alone
]


@pytest.mark.parametrize(("solver", "steps", "guidance", "negative"), SD1_CASES)
def test_sd1_generate_matches_diffusers(
    sd1_folder: Path, solver: str, steps: int, guidance: float, negative: str | None
) -> None:
    reference = StableDiffusionPipeline.from_pretrained(sd1_folder)
    expected = diffusers_latents(
        reference,
        solver,
        prompt="a red cube",
        negative_prompt=negative,
        num_inference_steps=steps,
        guidance_scale=guidance,
        seed=7,
        height=SIZE,
        width=SIZE + 16,
    )
    model = StableDiffusion1.from_diffusers(sd1_folder, solver=solver)
    steps_seen: list[tuple[int, int]] = []
    actual = model.generate_latents(
        "a red cube",
        negative_prompt=negative,
        steps=steps,
        guidance=guidance,
        seed=7,
        height=SIZE,
        width=SIZE + 16,
        callback=lambda done, total: steps_seen.append((done, total)),
    )
    compare(expected, actual)
    assert steps_seen == [(i + 1, steps) for i in range(steps)]


@pytest.mark.parametrize(("solver", "negative"), [("euler", None), ("dpm++2m", "dark")])
def test_sdxl_generate_matches_diffusers(sdxl_folder: Path, solver: str, negative: str | None) -> None:
    reference = StableDiffusionXLPipeline.from_pretrained(sdxl_folder)
    options: dict[str, Any] = {"num_inference_steps": 3, "guidance_scale": 6.0, "height": SIZE, "width": SIZE}
    expected = diffusers_latents(reference, solver, prompt="a cube", negative_prompt=negative, seed=3, **options)
    model = load_pipeline(sdxl_folder, solver=solver)
    assert isinstance(model, StableDiffusionXL) and model.force_zeros_for_empty_prompt
    actual = model.generate_latents(
        "a cube", negative_prompt=negative, steps=3, guidance=6.0, seed=3, height=SIZE, width=SIZE
    )
    compare(expected, actual)


def test_generate_returns_an_image_of_the_requested_size(sd1_folder: Path) -> None:
    model = load_pipeline(sd1_folder)
    image = model.generate("a red cube", steps=2, seed=0, width=48, height=32)
    assert image.size == (48, 32) and image.mode == "RGB"
    with pytest.raises(ValueError, match="multiples of 8"):
        model.generate("a red cube", steps=1, width=50, height=32)


def test_guidance_formula() -> None:
    unconditional, conditional = torch.zeros(1, 2), torch.ones(1, 2)
    guided = classifier_free_guidance(torch.cat([unconditional, conditional]), 7.5)
    assert torch.equal(guided, torch.full((1, 2), 7.5))


def test_wrong_topology_and_missing_parts(sd1_folder: Path, sdxl_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="StableDiffusionXL"):
        StableDiffusion1.from_diffusers(sdxl_folder)
    with pytest.raises(ValueError, match="StableDiffusion1"):
        StableDiffusionXL.from_diffusers(sd1_folder)
    with pytest.raises(Exception, match="not a diffusers pipeline folder"):
        load_pipeline(tmp_path)
