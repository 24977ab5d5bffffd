"""Loading a full-size SD1.5 / SDXL single-file checkpoint: ``refiners_sd.load_pipeline`` vs diffusers
``from_single_file(FILE, config=FOLDER)``, time and peak memory (RSS).

The bench writes its own checkpoints: a pipeline at the real sizes is built on ``meta``, given random
float16 weights and streamed to a ``.safetensors`` file in the single-file layout (one tensor at a time, so
writing SDXL needs ~7 GB, not 14), next to a diffusers config folder (``model_index.json``, component
``config.json``, tokenizers, scheduler) that diffusers needs to stay offline. Each load runs in a fresh
process (``--child``): import time is excluded, peak RSS is ``ru_maxrss`` and the process's RSS after its
imports is subtracted to give the memory the load itself added. Both libraries memory-map the file, so
pages are read on first use: "load + touch" also reads every page of every weight once (one element per 2
KiB: every page) before the peak is taken, so that the memory column is the memory of a model ready to
run. Both load in float16 onto the CPU; the file is read once beforehand so both start from a warm page
cache. The loaded UNets are compared on a
few tensors so the two libraries are known to have read the same weights.

Run: ``python bench/single_file.py [--models sd15 sdxl] [--repeats 2] [--dir /tmp/refiners-bench]``
(files are kept in ``--dir`` and reused). Informative only.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

CHUNK = 64 * 1024 * 1024
_SAFETENSORS_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.int64: "I64"}


# ---- writing random checkpoints ---------------------------------------------------------------------


@torch.no_grad()
def materialise(model: torch.nn.Module, dtype: torch.dtype, seed: int, device: str = "cpu") -> torch.nn.Module:
    """Give a meta-built model storage on ``device``: matrices ~ N(0, 1/fan_in), norm scales ~ 1, biases ~ 0."""
    model.to_empty(device=device)
    model.to(dtype)
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, parameter in model.named_parameters():
        if parameter.dim() >= 2:
            parameter.normal_(0.0, 1.0 / math.sqrt(parameter[0].numel()), generator=generator)
        elif name.endswith("weight"):
            parameter.normal_(1.0, 0.02, generator=generator)
        else:
            parameter.normal_(0.0, 0.02, generator=generator)
    return model.eval()


TINY_UNETS: dict[str, dict[str, Any]] = {
    "sd15": {
        "block_out_channels": [32, 64],
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "layers_per_block": 1,
        "cross_attention_dim": 64,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
        "sample_size": 8,
    },
    "sdxl": {
        "block_out_channels": [32, 64],
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "layers_per_block": 1,
        "transformer_layers_per_block": [1, 2],
        "attention_head_dim": [1, 1],
        "cross_attention_dim": 192,
        "norm_num_groups": 32,
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 32 + 48,
        "sample_size": 8,
    },
}


def random_pipeline(
    architecture: str, dtype: torch.dtype, tiny: bool = False, device: str = "cpu", seed: int = 0
) -> Any:
    """A refiners-sd pipeline with random weights: real sizes, or tiny ones (``tiny``) for smoke runs."""
    from refiners_sd import CLIPTokenizer, DoubleTextEncoder, SD1UNet, SDXLUNet, StableDiffusion1, StableDiffusionXL
    from refiners_sd.clip import CLIP_TEXT_G, CLIP_TEXT_L, CLIPTextEncoderG, CLIPTextEncoderL
    from refiners_sd.pipeline.defaults import SCHEDULER_CONFIGS
    from refiners_sd.unet.config import UNetConfig
    from refiners_sd.vae import AutoencoderConfig, AutoencoderKL
    from refiners_sd.vae.config import SD15_SCALING_FACTOR, SDXL_SCALING_FACTOR

    sdxl = architecture == "sdxl"
    text_l, text_g = CLIP_TEXT_L, CLIP_TEXT_G
    vae_config = AutoencoderConfig(scaling_factor=SDXL_SCALING_FACTOR if sdxl else SD15_SCALING_FACTOR)
    unet_config = None
    if tiny:
        from dataclasses import replace

        text_l = replace(CLIP_TEXT_L, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1)
        text_g = replace(
            CLIP_TEXT_G, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
            projection_dim=32,
        )  # fmt: skip
        vae_config = replace(vae_config, block_out_channels=(32, 64), layers_per_block=1)
        unet_config = UNetConfig.from_dict(TINY_UNETS[architecture])
    unet_class = SDXLUNet if sdxl else SD1UNet
    unet = materialise(unet_class(unet_config, device="meta"), dtype, seed, device)
    vae = materialise(AutoencoderKL(vae_config, device="meta"), dtype, seed + 1, device)
    encoder_l = materialise(CLIPTextEncoderL(text_l, device="meta"), dtype, seed + 2, device)
    scheduler = SCHEDULER_CONFIGS[architecture]
    if not sdxl:
        return StableDiffusion1(unet, encoder_l, CLIPTokenizer.bundled(), vae, scheduler)  # type: ignore[arg-type]
    encoder_g = materialise(CLIPTextEncoderG(text_g, device="meta"), dtype, seed + 3, device)
    return StableDiffusionXL(
        unet,  # type: ignore[arg-type]
        DoubleTextEncoder(encoder_l, encoder_g),  # type: ignore[arg-type]
        CLIPTokenizer.bundled(),
        CLIPTokenizer.bundled(pad_token="!"),
        vae,  # type: ignore[arg-type]
        scheduler,
    )


def stream_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    """Write ``tensors`` as a safetensors file one tensor at a time (no serialised copy of the whole file)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with path.open("wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little"))
        handle.write(encoded)
        for tensor in tensors.values():
            data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            for start in range(0, data.numel(), CHUNK):
                handle.write(data[start : start + CHUNK].numpy().tobytes())
    return path


def write_config_folder(pipeline: Any, folder: Path) -> Path:
    """The diffusers pipeline folder without weights: what ``from_single_file(..., config=folder)`` reads."""
    from refiners_sd import StableDiffusionXL
    from refiners_sd.clip.bpe import write_tokenizer_files
    from refiners_sd.clip.saving import transformers_config
    from refiners_sd.vae.saving import diffusers_config

    sdxl = isinstance(pipeline, StableDiffusionXL)

    def write(path: Path, data: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2), encoding="utf-8")

    unet = pipeline.unet.config.to_dict()
    unet["_class_name"] = "UNet2DConditionModel"
    write(folder / "unet" / "config.json", unet)
    vae = diffusers_config(pipeline.autoencoder)
    vae["force_upcast"] = sdxl
    write(folder / "vae" / "config.json", vae)
    write(folder / "scheduler" / "scheduler_config.json", pipeline.scheduler_config)
    tokenizer_config = {"model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}
    index: dict[str, Any] = {
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", pipeline.scheduler_config["_class_name"]],
    }
    encoders = [("text_encoder", pipeline.text_encoder.text_encoder_l if sdxl else pipeline.text_encoder)]
    tokenizers = [("tokenizer", "<|endoftext|>")]
    if sdxl:
        encoders.append(("text_encoder_2", pipeline.text_encoder.text_encoder_g))
        tokenizers.append(("tokenizer_2", "!"))
        index |= {
            "_class_name": "StableDiffusionXLPipeline",
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "force_zeros_for_empty_prompt": True,
        }
    else:
        index |= {
            "_class_name": "StableDiffusionPipeline",
            "safety_checker": [None, None],
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
        }
    for name, encoder in encoders:
        write(folder / name / "config.json", transformers_config(encoder))
    for name, pad in tokenizers:
        write_tokenizer_files(folder / name)
        write(folder / name / "tokenizer_config.json", tokenizer_config | {"pad_token": pad})
    write(folder / "model_index.json", index)
    return folder


def write_checkpoint(architecture: str, directory: Path, tiny: bool = False) -> tuple[Path, Path]:
    """``(single file, config folder)`` of a random float16 pipeline, written once and reused."""
    from refiners_sd.single_file import single_file_state_dict

    stem = f"{architecture}{'-tiny' if tiny else ''}"
    file, folder = directory / f"{stem}.safetensors", directory / f"{stem}-config"
    if not file.is_file() or not (folder / "model_index.json").is_file():
        directory.mkdir(parents=True, exist_ok=True)
        pipeline = random_pipeline(architecture, torch.float16, tiny=tiny)
        write_config_folder(pipeline, folder)
        stream_safetensors(single_file_state_dict(pipeline), file.with_suffix(".part"))
        file.with_suffix(".part").rename(file)
        del pipeline
        gc.collect()  # Chains hold parent links (cycles): free the 7 GB before the measured children run
    return file, folder


# ---- measuring ----------------------------------------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _probe(unet: torch.nn.Module, names: list[str]) -> list[float]:
    state = unet.state_dict()
    return [float(state[name].float().sum()) for name in names]


def child(kind: str, file: Path, folder: Path, architecture: str) -> dict[str, Any]:
    """Load once in this process; return seconds, peak RSS and RSS before loading."""
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    import transformers  # both sides build CLIP tokenizers with it: keep its import out of the timing

    transformers.CLIPTokenizer  # noqa: B018 (resolves the lazy module)
    if kind == "ours":
        import refiners_sd
        import refiners_sd.single_file.loading  # noqa: F401 (imports excluded from the timing, as for diffusers)
        from refiners_sd.unet.mapping import diffusers_module_map

        baseline = _rss()
        start = time.perf_counter()
        model = refiners_sd.load_pipeline(file, dtype=torch.float16)
        seconds = time.perf_counter() - start
        touched = time.perf_counter() - start + touch(model.unet, model.text_encoder, model.autoencoder)
        modules = diffusers_module_map(model.unet)
        probe = [float(modules[name].weight.float().sum()) for name in PROBES]
    else:
        import diffusers
        import diffusers.loaders.single_file_utils  # noqa: F401
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
        from diffusers.utils import logging as diffusers_logging
        from transformers import CLIPTextModel, CLIPTextModelWithProjection  # noqa: F401

        for name in ("AutoencoderKL", "UNet2DConditionModel"):  # resolve diffusers' lazy modules before timing
            getattr(diffusers, name)

        diffusers_logging.set_verbosity_error()
        cls = StableDiffusionXLPipeline if architecture == "sdxl" else StableDiffusionPipeline
        baseline = _rss()
        start = time.perf_counter()
        pipeline = cls.from_single_file(str(file), config=str(folder), local_files_only=True, torch_dtype=torch.float16)
        seconds = time.perf_counter() - start
        parts = [pipeline.unet, pipeline.vae, pipeline.text_encoder, getattr(pipeline, "text_encoder_2", None)]
        touched = time.perf_counter() - start + touch(*[part for part in parts if part is not None])
        probe = _probe(pipeline.unet, [f"{name}.weight" for name in PROBES])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": seconds, "touched": touched, "peak": peak, "baseline": baseline, "probe": probe}


@torch.no_grad()
def touch(*models: torch.nn.Module) -> float:
    """Read every weight once (memory-mapped pages become resident); returns the seconds it took."""
    start = time.perf_counter()
    for model in models:
        for tensor in model.state_dict().values():
            tensor.float().sum() if tensor.numel() < 2**20 else tensor.view(-1)[:: 2048 // tensor.element_size()].sum()
    return time.perf_counter() - start


PROBES = ["conv_in", "mid_block.attentions.0.transformer_blocks.0.attn2.to_k", "up_blocks.1.resnets.0.conv1"]


def run_child(kind: str, file: Path, folder: Path, architecture: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", kind, str(file), str(folder), architecture]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} load failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def warm(file: Path) -> None:
    with file.open("rb") as handle:
        while handle.read(CHUNK):
            pass


def gib(value: float) -> str:
    return f"{value / 2**30:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["sd15", "sdxl"], choices=["sd15", "sdxl"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/refiners-bench"))
    parser.add_argument("--tiny", action="store_true", help="tiny random models (a smoke run of the script)")
    parser.add_argument("--child", nargs=4, metavar=("KIND", "FILE", "FOLDER", "ARCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, file, folder, architecture = args.child
        print(json.dumps(child(kind, Path(file), Path(folder), architecture)))
        return

    import diffusers

    print(
        f"single-file load to CPU in float16, torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"{os.cpu_count()} CPUs, median of {args.repeats} (fresh process each, warm page cache)"
    )
    rows = []
    for architecture in args.models:
        start = time.perf_counter()
        file, folder = write_checkpoint(architecture, args.dir, tiny=args.tiny)
        print(
            f"- {architecture}: {file} ({gib(file.stat().st_size)} GiB), ready in {time.perf_counter() - start:.0f} s"
        )
        warm(file)
        results: dict[str, list[dict[str, Any]]] = {"ours": [], "diffusers": []}
        for _ in range(args.repeats):
            for kind in results:
                results[kind].append(run_child(kind, file, folder, architecture))
        probes = {kind: runs[0]["probe"] for kind, runs in results.items()}
        same = all(math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-3) for a, b in zip(*probes.values(), strict=True))
        print(f"  same UNet weights read by both (probe sums): {same}")
        size = file.stat().st_size
        summary = {}
        for kind, runs in results.items():
            seconds = statistics.median(run["seconds"] for run in runs)
            touched = statistics.median(run["touched"] for run in runs)
            peak = statistics.median(run["peak"] for run in runs)
            added = statistics.median(run["peak"] - run["baseline"] for run in runs)
            summary[kind] = (seconds, peak, added, touched)
        ours, theirs = summary["ours"], summary["diffusers"]
        rows.append((architecture, size, ours, theirs))
    print()
    print("| model | file (GiB) | ours load (s) | diffusers load (s) | speed-up | ours load + touch (s) "
          "| diffusers load + touch (s) | speed-up | ours peak RSS (GiB) | diffusers peak RSS (GiB) "
          "| ours added / file | diffusers added / file |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for architecture, size, ours, theirs in rows:
        print(
            f"| {architecture} | {gib(size)} | {ours[0]:.2f} | {theirs[0]:.2f} | {theirs[0] / ours[0]:.1f}x "
            f"| {ours[3]:.2f} | {theirs[3]:.2f} | {theirs[3] / ours[3]:.1f}x "
            f"| {gib(ours[1])} | {gib(theirs[1])} | {ours[2] / size:.2f} | {theirs[2] / size:.2f} |"
        )


if __name__ == "__main__":
    main()
