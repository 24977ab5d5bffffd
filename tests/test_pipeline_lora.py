"""LoRA files with UNet and text-encoder parts on whole pipelines: ``load_adapter(pipeline, file)`` and
``refiners generate --lora`` against diffusers' ``load_lora_weights`` on tiny SD1.5 and SDXL pipelines.

The LoRA is random PEFT weights on the UNet and every text encoder (``q/k/v/out_proj``, ``fc1/fc2``), written as
diffusers (``unet.``/``text_encoder.``/``text_encoder_2.`` PEFT keys) and kohya (``lora_unet_``, ``lora_te_`` for
SD1.5, ``lora_te1_``/``lora_te2_`` for SDXL) files; the same file goes to both libraries.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from registry_fixtures import run_cli
from safetensors.torch import save_file
from tiny_pipelines import sd15_pipeline, sdxl_pipeline

from refiners_core import LoadedAdapter, load_adapter

TOLERANCE = 1e-3  # the pipelines' own parity tolerance (tests/test_sd_pipeline.py)
RANK, ALPHA = 4, 4
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
PROMPT = "a red cube"
SIZE = 64
OPTIONS: dict[str, Any] = {"steps": 2, "guidance": 7.5, "seed": 5, "width": SIZE, "height": SIZE}


def _randomize_lora(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator))


def _peft_layers(model: torch.nn.Module, targets: list[str], seed: int) -> dict[str, torch.Tensor]:
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets, init_lora_weights=False)
    inject_adapter_in_model(config, model)
    _randomize_lora(model, seed)
    return get_peft_model_state_dict(model)


class Case:
    """A tiny diffusers pipeline folder and a LoRA on all its parts, as a diffusers and a kohya file."""

    def __init__(self, root: Path, architecture: str) -> None:
        from diffusers import (
            StableDiffusionPipeline,
            StableDiffusionXLPipeline,
        )
        from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

        self.architecture = architecture
        self.folder = root / "pipeline"
        if architecture == "sd15":
            host: Any = StableDiffusionPipeline
            pipeline: Any = sd15_pipeline(root)
            encoders = {"text_encoder": pipeline.text_encoder}
        else:
            host = StableDiffusionXLPipeline
            pipeline = sdxl_pipeline(root)
            encoders = {"text_encoder": pipeline.text_encoder, "text_encoder_2": pipeline.text_encoder_2}
        pipeline.save_pretrained(self.folder)
        layers = {"unet_lora_layers": _peft_layers(pipeline.unet, UNET_TARGETS, 7)}
        for index, (component, encoder) in enumerate(encoders.items()):
            layers[f"{component}_lora_layers"] = _peft_layers(encoder, TEXT_TARGETS, 8 + index)
        host.save_lora_weights(root / "diffusers", **layers)
        self.diffusers_file = root / "diffusers" / "pytorch_lora_weights.safetensors"
        prefixed = {
            f"{name.removesuffix('_lora_layers')}.{key}": value
            for name, state in layers.items()
            for key, value in state.items()
        }
        kohya = convert_state_dict_to_kohya(prefixed)
        if architecture == "sd15":  # SD1.5 trainers write lora_te_ (one text encoder)
            kohya = {key.replace("lora_te1_", "lora_te_"): value for key, value in kohya.items()}
        kohya = {key: value.float() if key.endswith(".alpha") else value for key, value in kohya.items()}
        assert any(key.startswith(("lora_te_", "lora_te1_")) for key in kohya)
        assert any(key.startswith("lora_unet_") for key in kohya)
        self.kohya_file = root / "kohya.safetensors"
        save_file(kohya, self.kohya_file)
        self.components = {"unet", *encoders}

    def diffusers_pipeline(self, lora: Path | None) -> Any:
        from diffusers import DDIMScheduler, DiffusionPipeline

        pipeline = DiffusionPipeline.from_pretrained(self.folder)
        pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
        pipeline.set_progress_bar_config(disable=True)
        if lora is not None:
            pipeline.load_lora_weights(str(lora))
        return pipeline

    def diffusers_latents(self, lora: Path | None) -> torch.Tensor:
        pipeline = self.diffusers_pipeline(lora)
        options = dict(OPTIONS)
        generator = torch.Generator(device="cpu").manual_seed(options.pop("seed"))
        with torch.no_grad():
            return pipeline(
                PROMPT,
                num_inference_steps=options["steps"],
                guidance_scale=options["guidance"],
                width=SIZE,
                height=SIZE,
                generator=generator,
                output_type="latent",
            ).images


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Case:
    return Case(tmp_path_factory.mktemp(request.param), request.param)


@pytest.mark.parametrize("layout", ["diffusers", "kohya"])
def test_text_encoder_lora_parity_from_python(case: Case, layout: str) -> None:
    from refiners_sd import load_pipeline

    lora = case.diffusers_file if layout == "diffusers" else case.kohya_file
    expected = case.diffusers_latents(lora)
    bare = case.diffusers_latents(None)
    pipeline = load_pipeline(case.folder, device="cpu", dtype=torch.float32, solver="ddim")
    handle = load_adapter(pipeline, lora)  # the family is detected from the file
    assert isinstance(handle, LoadedAdapter)
    assert {component for component, _ in handle.manager.layers_of(handle.name)} == case.components
    actual = pipeline.generate_latents(PROMPT, **OPTIONS)
    difference = (actual - expected).abs().max().item()
    print(f"{case.architecture} {layout} text-encoder LoRA: max |diff| {difference:.2e}")
    assert difference < TOLERANCE
    assert (expected - bare).abs().max().item() > 100 * TOLERANCE  # the LoRA matters
    handle.remove()
    assert (pipeline.generate_latents(PROMPT, **OPTIONS) - bare).abs().max().item() < TOLERANCE


@pytest.mark.parametrize("layout", ["diffusers", "kohya"])
def test_saved_text_encoder_lora_loads_in_diffusers(case: Case, layout: str, tmp_path: Path) -> None:
    # what LoraManager.save writes (lora_te_ for one text encoder, lora_te1_/lora_te2_ for two; PEFT configs
    # without `text_model.`) gives diffusers' own result for the original file
    from refiners_sd import load_pipeline
    from safetensors import safe_open

    pipeline = load_pipeline(case.folder, device="cpu", dtype=torch.float32, solver="ddim")
    handle = load_adapter(pipeline, case.diffusers_file)
    saved = handle.manager.save(handle.name, tmp_path / "saved.safetensors", format=layout)
    with safe_open(saved, "pt") as file:
        prefixes = {key.split("_text_model")[0] for key in file.keys() if "_text_model" in key}
    if layout == "kohya":
        assert prefixes == ({"lora_te"} if case.architecture == "sd15" else {"lora_te1", "lora_te2"})
    expected = case.diffusers_latents(case.diffusers_file)
    difference = (case.diffusers_latents(saved) - expected).abs().max().item()
    assert difference < TOLERANCE


def test_text_encoder_lora_parity_from_the_cli(case: Case, tmp_path: Path) -> None:
    lora = case.kohya_file if case.architecture == "sd15" else case.diffusers_file
    output = tmp_path / "out.png"
    args = ["generate", PROMPT, "--base", str(case.folder), "--lora", f"{lora}:1.0", "-o", str(output)]
    args += ["--steps", "2", "--seed", "5", "--width", str(SIZE), "--height", str(SIZE), "--device", "cpu"]
    result = run_cli({**os.environ, "HF_HUB_OFFLINE": "1"}, *args, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == str(output)
    pipeline = case.diffusers_pipeline(lora)
    generator = torch.Generator(device="cpu").manual_seed(5)
    with torch.no_grad():
        expected = pipeline(
            PROMPT, num_inference_steps=2, guidance_scale=7.5, width=SIZE, height=SIZE, generator=generator,
            output_type="np",
        ).images[0]  # fmt: skip
    with Image.open(output) as image:
        actual = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    difference = float(np.abs(actual - expected).max())
    print(f"{case.architecture} CLI --lora vs diffusers load_lora_weights: max |diff| {difference:.2e} (8-bit PNG)")
    assert difference <= 2 / 255 + TOLERANCE


def test_lora_for_the_other_architecture_is_refused_through_the_pipeline(case: Case, tmp_path: Path) -> None:
    """The pipeline's architecture reaches the LoRA manager: a file whose header names the other base model is
    refused before any key matching, and the pipeline is left without a LoRA."""
    from refiners_sd import load_pipeline
    from safetensors.torch import load_file, save_file

    from refiners_core import RefinersError

    other = "sdxl" if case.architecture == "sd15" else "sd15"
    version = {"sdxl": "sdxl_base_v1-0", "sd15": "sd_v1"}[other]
    tagged = tmp_path / "other.safetensors"
    save_file(load_file(str(case.kohya_file)), tagged, metadata={"ss_base_model_version": version})
    pipeline = load_pipeline(case.folder, device="cpu", dtype=torch.float32)
    keys = set(pipeline.unet.state_dict())
    with pytest.raises(RefinersError, match=f"trained for {other}.*{case.architecture}"):
        load_adapter(pipeline, tagged)
    assert set(pipeline.unet.state_dict()) == keys


def test_non_finite_lora_scale_is_one_error_line(case: Case, tmp_path: Path) -> None:
    output = tmp_path / "nan.png"
    args = ["generate", PROMPT, "--base", str(case.folder), "--lora", f"{case.kohya_file}:nan", "-o", str(output)]
    result = run_cli({**os.environ, "HF_HUB_OFFLINE": "1"}, *args, "--steps", "1", timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert result.returncode != 0 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "nan" in errors[0].lower() and not output.exists()
