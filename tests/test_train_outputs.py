"""Trained LoRA files load in diffusers ``load_lora_weights`` and in ``refiners generate`` with the same effect
(alpha travels in both formats), carry kohya metadata, and the CLI reports bad options in one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from refiners_train.lora import train_lora
from safetensors import safe_open
from train_fixtures import lora_config, one_thread, tiny_base, toy_data  # noqa: F401
from typer.testing import CliRunner

PROMPT, SEED, STEPS = "a red square", 3, 3


def _refiners(*args: str) -> Any:
    from refiners_core.cli.app import build_app
    from refiners_core.plugins import register_commands

    app = build_app()
    register_commands(app)
    return CliRunner().invoke(app, list(args))


def _generate(base: Path, output: Path, *lora: str) -> np.ndarray:
    extra = ["--lora", lora[0]] if lora else []
    result = _refiners(
        "generate",
        PROMPT,
        "--base",
        str(base),
        "--steps",
        str(STEPS),
        "--seed",
        str(SEED),
        *extra,
        "-o",
        str(output),
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    with Image.open(output) as image:
        return np.asarray(image, dtype=np.float32)


def _diffusers_image(base: Path, lora: Path | None) -> np.ndarray:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(base), safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(str(lora))
    generator = torch.Generator().manual_seed(SEED)
    result = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=7.5, generator=generator, output_type="pil")
    return np.asarray(result.images[0], dtype=np.float32)


@pytest.fixture(scope="module")
def trained(tiny_base: Path, toy_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:  # noqa: F811
    folder = tmp_path_factory.mktemp("outputs")
    files = {}
    for layout in ("kohya", "diffusers"):
        config = lora_config(
            tiny_base,
            toy_data,
            folder / f"{layout}.safetensors",
            steps=6,
            lr=2e-2,
            batch_size=2,
            text_encoder=True,
            rank=4,
            alpha=8,
            format=layout,
        )
        train_lora(config)
        files[layout] = config.output
    return files


def test_kohya_metadata_and_alpha(trained: dict[str, Path]) -> None:
    with safe_open(str(trained["kohya"]), "pt") as handle:
        metadata = handle.metadata()
        keys = list(handle.keys())
        alphas = {float(handle.get_tensor(key)) for key in keys if key.endswith(".alpha")}
    assert metadata["ss_network_dim"] == "4" and metadata["ss_network_alpha"] == "8"
    assert metadata["ss_base_model_version"] == "sd_v1"
    assert json.loads(metadata["ss_tag_frequency"]) == {
        "data": {f"a {c} square": 1 for c in ("blue", "green", "red", "yellow")}
    }
    assert json.loads(metadata["refiners_train_settings"])["steps"] == 6
    assert alphas == {8.0}
    assert any(key.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj.") for key in keys)
    assert any(key.startswith("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.") for key in keys)
    with safe_open(str(trained["diffusers"]), "pt") as handle:
        config = json.loads(handle.metadata()["lora_adapter_metadata"])
    assert config["unet.r"] == 4 and config["unet.lora_alpha"] == 8 and config["text_encoder.lora_alpha"] == 8


@pytest.mark.parametrize("layout", ["kohya", "diffusers"])
def test_same_effect_in_diffusers_and_refiners_generate(
    trained: dict[str, Path],
    tiny_base: Path,  # noqa: F811
    tmp_path: Path,
    layout: str,
) -> None:
    ours_bare = _generate(tiny_base, tmp_path / "bare.png")
    ours = _generate(tiny_base, tmp_path / "lora.png", str(trained[layout]))
    theirs_bare = _diffusers_image(tiny_base, None)
    theirs = _diffusers_image(tiny_base, trained[layout])
    effect = float(np.abs(ours - ours_bare).mean())
    gap = float(np.abs(ours - theirs).max())
    print(f"{layout}: LoRA effect {effect:.2f} / 255 (mean), refiners vs diffusers with the LoRA: max {gap:.0f} / 255")
    assert float(np.abs(ours_bare - theirs_bare).max()) <= 2
    assert effect > 2  # the LoRA visibly changes the image
    assert gap <= 2  # ... the same way in both


def test_cli_bad_options_are_one_line(tiny_base: Path, toy_data: Path, tmp_path: Path) -> None:  # noqa: F811
    common = ["train", "lora", "--base", str(tiny_base), "--data", str(toy_data)]
    cases = {
        ("--steps", "0"): "--steps must be at least 1",
        ("--mixed-precision", "fp8"): "--mixed-precision must be one of",
        ("--format", "peft"): "--format must be one of",
        ("--lr", "-1"): "--lr must be a positive number",
    }
    for options, message in cases.items():
        result = _refiners(*common, "-o", str(tmp_path / "x.safetensors"), *options)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 1 and lines == [f"Error: {lines[0][7:]}"] and message in lines[0], result.output
    result = _refiners(
        "train", "lora", "--base", str(tiny_base), "--data", str(tmp_path / "none"), "-o", "x.safetensors"
    )
    assert result.exit_code == 1 and "none: no such folder" in result.output and "Traceback" not in result.output


def test_cli_trains_through_the_base_model_hook(
    tiny_base: Path,  # noqa: F811
    toy_data: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import refiners_sd

    import refiners_core

    loaded: list[str] = []

    def load_base_model(source: str, *, device: Any = None, dtype: Any = None) -> Any:
        loaded.append(source)  # stands for the sd plugin's pipeline loader behind the hook
        return refiners_sd.load_pipeline(source, device=device, dtype=dtype)

    monkeypatch.setattr(refiners_core, "load_base_model", load_base_model)
    output = tmp_path / "cli.safetensors"
    options = ["--steps", "2", "--batch-size", "2", "--rank", "2", "--alpha", "1", "--format", "diffusers"]
    options += ["--save-every", "2", "--checkpoint-dir", str(tmp_path / "ckpt"), "--cache-latents", "--seed", "5"]
    result = _refiners("train", "lora", "--base", str(tiny_base), "--data", str(toy_data), "-o", str(output), *options)
    assert result.exit_code == 0, result.output
    assert loaded == [str(tiny_base)] and result.output.splitlines()[-1] == str(output)
    with safe_open(str(output), "pt") as handle:
        config = json.loads(handle.metadata()["lora_adapter_metadata"])
        settings = json.loads(handle.metadata()["refiners_train_settings"])
    assert config["unet.r"] == 2 and config["unet.lora_alpha"] == 1
    assert settings["seed"] == 5 and settings["batch_size"] == 2 and settings["cache_latents"] is True
    assert sorted(path.name for path in (tmp_path / "ckpt").iterdir()) == ["log.jsonl", "step-00000002.pt"]
