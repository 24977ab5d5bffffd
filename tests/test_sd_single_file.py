"""Single-file SD 1.5 / SDXL checkpoints: parity with diffusers' ``from_single_file``, round trips, errors.

Tiny pipelines are built with diffusers and transformers (text encoders with CLIP's real 49,408-token
vocabulary, so the tokenizer bundled with refiners-sd fits), saved as diffusers folders (the configs
diffusers reads with ``config=``) and as single files in the A1111/ComfyUI layout, extra non-weight
tensors included. diffusers' reading of each file is first checked against the original weights, so the
files are in the real layout; then our pipeline's latents are compared with diffusers' for the same
scheduler and seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import refiners_sd
import torch
from diffusers import (
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from refiners_sd.clip.bpe import write_tokenizer_files
from refiners_sd.pipeline.defaults import SD15_SCHEDULER_CONFIG, SDXL_SCHEDULER_CONFIG
from refiners_sd.single_file.names import diffusers_vae_to_ldm, transformers_to_open_clip
from refiners_sd.unet.mapping import diffusers_to_ldm_name
from safetensors.torch import save_file
from tiny_pipelines import TOLERANCE, clip_tokenizer, compare, diffusers_latents, text_model, unet, vae
from transformers import CLIPTokenizer as TransformersCLIPTokenizer

from refiners_core import PickleRefusedError, WeightsError

SIZE = 64
WIDTH = 64  # CLIP-L: one head of 64 channels, the convention shapes cannot tell
WIDTH_G = 128  # bigG: two heads; diffusers tells SDXL's encoders apart by width, so the tiny ones differ

SD15_UNET: dict[str, Any] = {
    "block_out_channels": (32, 64),
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "layers_per_block": 1,
    "cross_attention_dim": WIDTH,
    "attention_head_dim": 8,  # SD 1.x: 8 heads in every block
    "norm_num_groups": 32,
    "sample_size": 8,
}
SDXL_POOLED = 32
SDXL_UNET: dict[str, Any] = {
    "block_out_channels": (32, 64),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "layers_per_block": 1,
    "transformer_layers_per_block": (1, 2),
    "attention_head_dim": (1, 1),  # SDXL: 64 channels per head, at least one
    "cross_attention_dim": WIDTH + WIDTH_G,
    "norm_num_groups": 32,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": SDXL_POOLED + 6 * 8,
    "sample_size": 8,
}
TINY_VAE: dict[str, Any] = {"block_out_channels": (32, 64), "norm_num_groups": 32}  # two blocks: 2x2 pixels per latent
NOISE_SCHEDULE = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod")


def _text_l_tensors(model: Any) -> dict[str, torch.Tensor]:
    return {
        "text_model." + key.removeprefix("text_model."): value
        for key, value in model.state_dict().items()
        if not key.endswith("position_ids")
    }


def single_file_tensors(pipeline: Any, sdxl: bool, ema: bool = False) -> dict[str, torch.Tensor]:
    """The pipeline in the single-file layout, with the non-weight tensors real files carry."""
    unet_config = dict(pipeline.unet.config)
    tensors = {
        "model.diffusion_model." + diffusers_to_ldm_name(key, unet_config): value
        for key, value in pipeline.unet.state_dict().items()
    }
    if ema:  # an EMA copy under flattened names, deliberately different: the regular weights are the ones used
        tensors |= {
            "model_ema." + key.removeprefix("model.").replace(".", ""): value + 1.0 for key, value in tensors.items()
        }
        tensors |= {"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(1000)}
    tensors |= {
        "first_stage_model." + key: value for key, value in diffusers_vae_to_ldm(pipeline.vae.state_dict()).items()
    }
    text_prefix = "conditioner.embedders.0.transformer." if sdxl else "cond_stage_model.transformer."
    tensors |= {text_prefix + key: value for key, value in _text_l_tensors(pipeline.text_encoder).items()}
    tensors[text_prefix + "text_model.embeddings.position_ids"] = torch.arange(77)[None]
    if sdxl:
        state = {k: v for k, v in pipeline.text_encoder_2.state_dict().items() if not k.endswith("position_ids")}
        prefix = "conditioner.embedders.1.model."
        tensors |= {prefix + key: value for key, value in transformers_to_open_clip(state).items()}
        tensors[prefix + "logit_scale"] = torch.tensor(4.6052)
    schedule = torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    tensors |= {name: schedule.clone() for name in NOISE_SCHEDULE}
    return {key: value.contiguous() for key, value in tensors.items()}


def write_single_file(pipeline: Any, path: Path, sdxl: bool, dtype: torch.dtype | None = None, **options: Any) -> Path:
    tensors = single_file_tensors(pipeline, sdxl, **options)
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(tensors, str(path))
    return path


@pytest.fixture(scope="module")
def sd15(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, Path]:
    root = tmp_path_factory.mktemp("sd15_single")
    pipeline = StableDiffusionPipeline(
        vae=vae(**TINY_VAE, scaling_factor=0.18215),
        text_encoder=text_model(WIDTH, seed=1, clip_vocabulary=True),
        tokenizer=clip_tokenizer(root / "tok"),
        unet=unet(SD15_UNET),
        scheduler=DDIMScheduler.from_config(SD15_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(root / "folder")
    return pipeline, root / "folder", write_single_file(pipeline, root / "sd15.safetensors", sdxl=False)


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, Path]:
    root = tmp_path_factory.mktemp("sdxl_single")
    pipeline = StableDiffusionXLPipeline(
        vae=vae(**TINY_VAE, scaling_factor=0.13025),
        text_encoder=text_model(WIDTH, seed=1, clip_vocabulary=True),
        text_encoder_2=text_model(WIDTH_G, SDXL_POOLED, seed=2, clip_vocabulary=True),
        tokenizer=clip_tokenizer(root / "tok"),
        tokenizer_2=clip_tokenizer(root / "tok2", pad_token="!"),
        unet=unet(SDXL_UNET),
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG),
        add_watermarker=False,
    )
    pipeline.save_pretrained(root / "folder")
    return pipeline, root / "folder", write_single_file(pipeline, root / "sdxl.safetensors", sdxl=True)


def assert_same_weights(expected: torch.nn.Module, actual: torch.nn.Module) -> None:
    reference = {k: v for k, v in expected.state_dict().items() if not k.endswith("position_ids")}
    state = {k: v for k, v in actual.state_dict().items() if not k.endswith("position_ids")}
    assert set(state) == set(reference)
    for key, value in reference.items():
        assert torch.equal(state[key].float(), value.float()), key


def diffusers_from_file(cls: Any, file: Path, folder: Path) -> Any:
    pipeline = cls.from_single_file(str(file), config=str(folder), local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.mark.parametrize(("solver", "negative"), [("ddim", None), ("euler", "blurry")])
def test_sd15_single_file_matches_diffusers(sd15: tuple[Any, Path, Path], solver: str, negative: str | None) -> None:
    original, folder, file = sd15
    reference = diffusers_from_file(StableDiffusionPipeline, file, folder)
    for name in ("unet", "vae", "text_encoder"):  # the file is in the layout diffusers reads
        assert_same_weights(getattr(original, name), getattr(reference, name))
    options: dict[str, Any] = {"negative_prompt": negative, "num_inference_steps": 3, "guidance_scale": 7.5}
    expected = diffusers_latents(reference, solver, prompt="a red cube, ☃", seed=5, height=SIZE, width=SIZE, **options)
    model = refiners_sd.load_pipeline(file, solver=solver)
    assert isinstance(model, refiners_sd.StableDiffusion1)
    assert model.unet.config.num_attention_heads == (8, 8)
    actual = model.generate_latents(
        "a red cube, ☃", negative_prompt=negative, steps=3, guidance=7.5, seed=5, height=SIZE, width=SIZE
    )
    compare(expected, actual)


def test_sdxl_single_file_matches_diffusers(sdxl: tuple[Any, Path, Path]) -> None:
    original, folder, file = sdxl
    reference = diffusers_from_file(StableDiffusionXLPipeline, file, folder)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert_same_weights(getattr(original, name), getattr(reference, name))
    expected = diffusers_latents(
        reference, "euler", prompt="a lighthouse at dusk", num_inference_steps=3, guidance_scale=6.0, seed=3,
        height=SIZE, width=SIZE,
    )  # fmt: skip
    model = refiners_sd.load_pipeline(file, solver="euler")
    assert isinstance(model, refiners_sd.StableDiffusionXL)
    assert model.autoencoder.scaling_factor == 0.13025
    assert model.unet.config.addition_time_embed_dim == 8
    actual = model.generate_latents("a lighthouse at dusk", steps=3, guidance=6.0, seed=3, height=SIZE, width=SIZE)
    compare(expected, actual)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_files_load_their_weights(
    sd15: tuple[Any, Path, Path], tmp_path: Path, dtype: torch.dtype
) -> None:
    original, _, _ = sd15
    file = write_single_file(original, tmp_path / "half.safetensors", sdxl=False, dtype=dtype)
    model = refiners_sd.load_pipeline(file, dtype=dtype)
    assert model.dtype == dtype
    expected = refiners_sd.single_file.single_file_state_dict(refiners_sd.load_pipeline(file))
    actual = refiners_sd.single_file.single_file_state_dict(model)
    assert set(actual) == set(expected)
    for key, value in single_file_tensors(original, sdxl=False).items():
        if key in actual:
            assert torch.equal(actual[key], value.to(dtype)), key


def test_ema_copies_are_accepted_and_unused(sd15: tuple[Any, Path, Path], tmp_path: Path) -> None:
    original, _, file = sd15
    with_ema = write_single_file(original, tmp_path / "ema.safetensors", sdxl=False, ema=True)
    plain = refiners_sd.single_file.single_file_state_dict(refiners_sd.load_pipeline(file))
    loaded = refiners_sd.single_file.single_file_state_dict(refiners_sd.load_pipeline(with_ema))
    assert all(torch.equal(loaded[key], value) for key, value in plain.items())


def test_clip_keys_without_text_model_prefix(sd15: tuple[Any, Path, Path], tmp_path: Path) -> None:
    original, _, file = sd15
    tensors = {
        k.replace("transformer.text_model.", "transformer."): v for k, v in single_file_tensors(original, False).items()
    }
    save_file(tensors, str(tmp_path / "bare.safetensors"))
    bare = refiners_sd.load_pipeline(tmp_path / "bare.safetensors")
    reference = refiners_sd.load_pipeline(file)
    tokens = reference.tokenizer("a cat")
    assert torch.equal(bare.text_encoder(tokens), reference.text_encoder(tokens))


@pytest.mark.parametrize("case", ["sd15", "sdxl"])
def test_save_single_file_loads_in_diffusers(case: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    original, folder, file = request.getfixturevalue(case)
    saved = refiners_sd.save_single_file(refiners_sd.load_pipeline(file), tmp_path / "saved.safetensors")
    cls = StableDiffusionXLPipeline if case == "sdxl" else StableDiffusionPipeline
    reread = diffusers_from_file(cls, saved, folder)
    names = ("unet", "vae", "text_encoder") + (("text_encoder_2",) if case == "sdxl" else ())
    for name in names:
        assert_same_weights(getattr(original, name), getattr(reread, name))
    assert refiners_sd.detect_architecture(saved) == case


def test_ckpt_needs_the_pickle_opt_in(sd15: tuple[Any, Path, Path], tmp_path: Path) -> None:
    original, _, file = sd15
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": single_file_tensors(original, sdxl=False), "global_step": 10}, ckpt)
    with pytest.raises(PickleRefusedError, match="allow_pickle"):
        refiners_sd.load_pipeline(ckpt)
    assert refiners_sd.detect_architecture(ckpt) is None
    assert refiners_sd.detect_architecture(ckpt, allow_pickle=True) == "sd15"
    model = refiners_sd.load_pipeline(ckpt, allow_pickle=True)
    reference = refiners_sd.load_pipeline(file)
    weights = [refiners_sd.single_file.single_file_state_dict(m) for m in (model, reference)]
    assert all(torch.equal(weights[0][key], value) for key, value in weights[1].items())
    latents = [m.generate_latents("a cat", steps=2, seed=1, height=SIZE, width=SIZE) for m in (model, reference)]
    compare(latents[1], latents[0])  # equal weights; kernels may differ in the last bits with memory alignment


def test_detect_architecture(sd15: tuple[Any, Path, Path], sdxl: tuple[Any, Path, Path], tmp_path: Path) -> None:
    assert refiners_sd.detect_architecture(sd15[1]) == "sd15"
    assert refiners_sd.detect_architecture(sdxl[1]) == "sdxl"
    assert refiners_sd.detect_architecture(sd15[2]) == "sd15"
    assert refiners_sd.detect_architecture(sdxl[2]) == "sdxl"
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint at all")
    assert refiners_sd.detect_architecture(tmp_path / "junk.safetensors") is None
    assert refiners_sd.detect_architecture(tmp_path / "missing.safetensors") is None
    assert refiners_sd.detect_architecture(tmp_path) is None


def test_truncated_file_is_named(sd15: tuple[Any, Path, Path], tmp_path: Path) -> None:
    data = sd15[2].read_bytes()
    truncated = tmp_path / "partial.safetensors"
    truncated.write_bytes(data[: len(data) - 1000])
    assert refiners_sd.detect_architecture(truncated) == "sd15"  # the header is intact
    with pytest.raises(WeightsError, match=r"partial\.safetensors is truncated.*1000 missing"):
        refiners_sd.load_pipeline(truncated)


def test_wrong_architecture_and_wrong_keys(sd15: tuple[Any, Path, Path], tmp_path: Path) -> None:
    tensors = single_file_tensors(sd15[0], sdxl=False)
    sd2 = {k.replace("cond_stage_model.transformer.", "cond_stage_model.model."): v for k, v in tensors.items()}
    save_file(sd2, str(tmp_path / "sd2.safetensors"))
    with pytest.raises(WeightsError, match=r"sd2\.safetensors is not an SD 1.x or SDXL .*Stable Diffusion 2"):
        refiners_sd.load_pipeline(tmp_path / "sd2.safetensors")

    save_file({**tensors, "extra.thing": torch.zeros(1)}, str(tmp_path / "extra.safetensors"))
    with pytest.raises(WeightsError, match=r"extra\.safetensors: unknown keys .*extra\.thing"):
        refiners_sd.load_pipeline(tmp_path / "extra.safetensors")

    no_vae = {k: v for k, v in tensors.items() if not k.startswith("first_stage_model.")}
    save_file(no_vae, str(tmp_path / "novae.safetensors"))
    with pytest.raises(WeightsError, match=r"novae\.safetensors: .*lacks component\(s\) vae"):
        refiners_sd.load_pipeline(tmp_path / "novae.safetensors")

    missing = {k: v for k, v in tensors.items() if "output_blocks.2.1.proj_out" not in k}
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(WeightsError, match=r"missing\.safetensors \(UNet\).*output_blocks\.2\.1\.proj_out"):
        refiners_sd.load_pipeline(tmp_path / "missing.safetensors")


def test_vae_swap_from_file_and_folder(sd15: tuple[Any, Path, Path], tmp_path: Path) -> None:
    original, folder, file = sd15
    other = vae(**TINY_VAE, scaling_factor=0.18215)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.mul_(1.5)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "vae_diffusers.safetensors"))
    ldm = {"first_stage_model." + k: v.contiguous() for k, v in diffusers_vae_to_ldm(other.state_dict()).items()}
    save_file(ldm, str(tmp_path / "vae_ldm.safetensors"))
    other.save_pretrained(tmp_path / "vae_folder")
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = other.decode(latents / 0.18215).sample
    for source in ("vae_diffusers.safetensors", "vae_ldm.safetensors", "vae_folder"):
        model = refiners_sd.load_pipeline(file, vae=tmp_path / source)
        with torch.no_grad():
            actual = model.autoencoder.decode(latents)
        assert (actual - expected).abs().max().item() < TOLERANCE, source
    assert refiners_sd.load_pipeline(folder, vae=tmp_path / "vae_ldm.safetensors").autoencoder is not None


PROMPTS = [
    "",
    "a photo of a cat",
    "Élan, naïve café — 東京の夜 ☃ 🚀!!!",
    "  multiple   spaces\tand\nnewlines, (weights:1.2) [brackets] {braces} #hash @at 'quotes' \"double\"",
    "don't it's we'll 1234567 3.14 a-b_c/d",
    " ".join(["lighthouse"] * 60) + " at dusk, " * 20,  # far beyond 77 tokens
]


@pytest.mark.parametrize("pad_token", ["<|endoftext|>", "!"])
def test_bundled_tokenizer_equals_transformers(tmp_path: Path, pad_token: str) -> None:
    reference = TransformersCLIPTokenizer.from_pretrained(
        str(write_tokenizer_files(tmp_path / "tok")), pad_token=pad_token, model_max_length=77
    )
    ours = refiners_sd.CLIPTokenizer.bundled(pad_token=pad_token)
    for prompt in PROMPTS:
        expected = reference(prompt, padding="max_length", max_length=77, truncation=True).input_ids
        assert ours(prompt)[0].tolist() == expected, prompt
    assert ours("a photo of a cat")[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]  # CLIP's own ids
    long = ours(PROMPTS[-1])[0]
    assert long.shape == (77,) and long[-1].item() == 49407
    assert ours("")[0, 2].item() == (49407 if pad_token == "<|endoftext|>" else 0)


def test_lazy_exports_agree_with_type_checking_imports() -> None:
    import ast
    import importlib

    source = Path(refiners_sd.__file__).read_text(encoding="utf-8")
    tree = ast.parse(source)
    guarded = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    imported = {
        alias.asname or alias.name: node.module
        for node in ast.walk(guarded)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert set(imported) == set(refiners_sd._LAZY)
    for name, module in refiners_sd._LAZY.items():
        assert getattr(importlib.import_module(module), name) is getattr(refiners_sd, name), name


def test_gpu_bench_runs_tiny_on_cpu(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"
    command = [sys.executable, str(script), "--tiny", "--device", "cpu", "--dir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| sd")]
    assert [row.split(" | ")[-1] for row in rows[:2]] == ["ok |", "ok |"]  # parity of sd15 and sdxl
    assert sum("LoRA rank 8 load + fuse" in row for row in rows) == 2
