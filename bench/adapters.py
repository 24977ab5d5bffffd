"""Load + inject / eject of ControlNet, T2I-Adapter and IP-Adapter on a full-size SD1.5 UNet: ours vs diffusers.

Everything is fp32 on CPU (about 7 GB at the peak: one UNet whose tensors both libraries share, plus one
ControlNet per library). The UNet is diffusers' ``UNet2DConditionModel`` built from the real SD1.5 config on
the ``meta`` device and materialised with random fan-in-scaled weights; our ``SD1UNet`` gets the *same*
tensors (``load_diffusers_state_dict``), so both sides adapt identical UNets. Three adapter files are written
once into a temporary folder, at their real SD1.5 sizes and with random weights:

* a diffusers ``ControlNetModel`` folder (``save_pretrained``, 361M parameters);
* a diffusers ``T2IAdapter`` folder (``full_adapter``, channels 320/640/1280/1280, 77M parameters);
* an h94 ``ip-adapter_sd15.safetensors``-shaped file (base variant, ViT-H ``image_embeds`` of width 1024).

Each side then loads the same file. Both read safetensors through a memory map: "load" builds the network
and maps its tensors, whose bytes are paged in (from the page cache here) on first use, alike for both.
The steps compared:

* ControlNet: ``ControlNet.from_diffusers(unet, folder).inject()`` vs ``ControlNetModel.from_pretrained``;
* T2I-Adapter: ``T2IAdapter.from_diffusers(unet, folder).inject()`` vs ``diffusers.T2IAdapter.from_pretrained``;
* IP-Adapter: ``IPAdapter.from_file(unet, file).inject()`` vs the pipelines' ``load_ip_adapter`` (reads the
  file, then ``unet._load_ip_adapter_weights``), and ``eject()`` vs ``unload_ip_adapter``.

diffusers has no eject for ControlNet and T2I-Adapter: both are separate models handed to the pipeline at call
time, the UNet is never changed, so there is nothing to undo; those rows show ours alone.

Before timing, each adapter is loaded once by each side and a short UNet call (batch 1, 8x8 latents, 77 text
tokens) must agree, and differ from the bare UNet's output, so both really loaded the same weights. Then
``--repeats`` interleaved rounds follow one warm-up round (files are in the page cache for both sides after the
check); the median of each step is printed, with the ratio diffusers / ours (above 1: ours is faster).

Run: ``python bench/adapters.py [--repeats 10] [--threads N]``. Informative only; takes under a minute on
2 cores.
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from unet_forward import materialise  # same directory: run as python bench/adapters.py

LATENT = 8  # latent side of the parity check (conditions are 8x larger)
TOKENS = 77
IMAGE_EMBED_DIM = 1024  # CLIP ViT-H/14 image_embeds
IP_TOKENS = 4  # tokens per image of the base IP-Adapter
TOLERANCE = 1e-3  # relative to the largest output value


def build_unets() -> tuple[Any, Any]:
    """A random full-size SD1.5 diffusers UNet and our ``SD1UNet`` holding the very same tensors."""
    from diffusers import UNet2DConditionModel
    from refiners_sd import SD15_UNET_CONFIG, SD1UNet, load_diffusers_state_dict

    with torch.device("meta"):
        theirs = UNet2DConditionModel.from_config(SD15_UNET_CONFIG)
    materialise(theirs, seed=0)
    ours = SD1UNet(device="meta")
    load_diffusers_state_dict(ours, theirs.state_dict())
    return ours.eval(), theirs


def write_controlnet(theirs_unet: Any, folder: Path) -> None:
    """A random full-size SD1.5 diffusers ``ControlNetModel`` saved with ``save_pretrained``."""
    from diffusers import ControlNetModel

    with torch.device("meta"):
        model = ControlNetModel.from_unet(theirs_unet, load_weights_from_unet=False)
    materialise(model, seed=1).save_pretrained(folder)


def write_t2i(folder: Path) -> None:
    """A random SD1.5 ``full_adapter`` diffusers ``T2IAdapter`` saved with ``save_pretrained``."""
    from diffusers import T2IAdapter

    with torch.device("meta"):
        model = T2IAdapter(
            in_channels=3,
            channels=[320, 640, 1280, 1280],
            num_res_blocks=2,
            downscale_factor=8,
            adapter_type="full_adapter",
        )
    materialise(model, seed=2).save_pretrained(folder)


def write_ip_adapter(theirs_unet: Any, path: Path) -> None:
    """A random base SD1.5 IP-Adapter in the h94 layout (``image_proj.*``, ``ip_adapter.{2i+1}.to_k/v_ip``)."""
    generator = torch.Generator().manual_seed(3)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) / math.sqrt(shape[-1])

    cross = theirs_unet.config.cross_attention_dim
    state = {
        "image_proj.proj.weight": rand(IP_TOKENS * cross, IMAGE_EMBED_DIM),
        "image_proj.proj.bias": 0.02 * torch.randn(IP_TOKENS * cross, generator=generator),
        "image_proj.norm.weight": 1 + 0.02 * torch.randn(cross, generator=generator),
        "image_proj.norm.bias": 0.02 * torch.randn(cross, generator=generator),
    }
    cross_attentions = [name for name in theirs_unet.attn_processors if name.endswith("attn2.processor")]
    for index, name in enumerate(cross_attentions):
        inner = theirs_unet.get_submodule(name.removesuffix(".processor")).to_q.out_features
        state[f"ip_adapter.{2 * index + 1}.to_k_ip.weight"] = rand(inner, cross)
        state[f"ip_adapter.{2 * index + 1}.to_v_ip.weight"] = rand(inner, cross)
    save_file(state, path)


def ip_adapter_host(unet: Any) -> Any:
    """An object with the IP-Adapter methods of a diffusers SD pipeline (its loader mixin) over a bare UNet."""
    from diffusers.loaders import IPAdapterMixin

    class Host(IPAdapterMixin):
        unet_name = "unet"

        def __init__(self) -> None:
            self.unet = unet

    return Host()


def make_inputs() -> dict[str, torch.Tensor]:
    """Latents, timestep, text embedding, condition image and image embedding of the parity check."""
    generator = torch.Generator().manual_seed(4)
    return {
        "sample": torch.randn(1, 4, LATENT, LATENT, generator=generator),
        "timestep": torch.tensor([500]),
        "text": torch.randn(1, TOKENS, 768, generator=generator),
        "condition": torch.rand(1, 3, 8 * LATENT, 8 * LATENT, generator=generator),
        "image_embeds": torch.randn(1, 1, IMAGE_EMBED_DIM, generator=generator),
    }


@torch.inference_mode()
def run_ours(unet: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Our UNet on the check inputs (adapter conditions set by the caller)."""
    unet.set_timestep(inputs["timestep"])
    unet.set_clip_text_embedding(inputs["text"])
    return unet(inputs["sample"])


@torch.inference_mode()
def run_theirs(unet: Any, inputs: dict[str, torch.Tensor], **kwargs: Any) -> torch.Tensor:
    """The diffusers UNet on the check inputs (adapter residuals / image embeddings in ``kwargs``)."""
    return unet(inputs["sample"], inputs["timestep"], encoder_hidden_states=inputs["text"], **kwargs).sample


def check(name: str, ours: torch.Tensor, theirs: torch.Tensor, bare: torch.Tensor) -> str:
    """Assert both sides agree and that the adapter changed the output; returns a one-line summary."""
    scale = theirs.abs().max().item()
    error = (ours - theirs).abs().max().item()
    effect = (theirs - bare).abs().max().item()
    assert error <= TOLERANCE * scale, f"{name}: outputs differ by {error:.2e} (output max {scale:.2e})"
    assert effect > 100 * error, f"{name}: the adapter barely changes the output ({effect:.2e}): no real check"
    return f"{name}: max abs diff {error:.1e} (output max {scale:.1f}, adapter effect {effect:.1e})"


def rounds(
    libraries: dict[str, dict[str, Callable[[], Any]]],
    resets: dict[str, Callable[[], None]],
    repeats: int,
    warmup: int = 1,
) -> dict[str, dict[str, float]]:
    """Run each library's steps in order, libraries interleaved round by round, then its untimed reset.

    ``warmup`` rounds are not counted. Returns the median seconds of each step of each library."""
    times: dict[str, dict[str, list[float]]] = {
        library: {step: [] for step in steps} for library, steps in libraries.items()
    }
    for round_index in range(warmup + repeats):
        for library, steps in libraries.items():
            for step, run in steps.items():
                start = time.perf_counter()
                run()
                elapsed = time.perf_counter() - start
                if round_index >= warmup:
                    times[library][step].append(elapsed)
            resets[library]()
            gc.collect()
    return {
        library: {step: statistics.median(values) for step, values in steps.items()} for library, steps in times.items()
    }


class Holder:
    """Keeps the last object a timed step made, so that the next step (or the reset) can reach it."""

    def __init__(self) -> None:
        self.value: Any = None

    def keep(self, value: Any) -> None:
        self.value = value

    def drop(self) -> None:
        self.value = None


def bench_controlnet(
    ours_unet: Any, theirs_unet: Any, folder: Path, inputs: dict[str, torch.Tensor], repeats: int
) -> tuple[str, dict[str, dict[str, float]]]:
    """Parity check, then load+inject / eject rounds of the ControlNet."""
    from diffusers import ControlNetModel
    from refiners_controlnet import ControlNet

    bare = run_theirs(theirs_unet, inputs)
    controlnet = ControlNet.from_diffusers(ours_unet, folder).inject()
    controlnet.set_condition(inputs["condition"])
    ours = run_ours(ours_unet, inputs)
    controlnet.eject()
    model = ControlNetModel.from_pretrained(folder).eval()
    with torch.inference_mode():
        down, mid = model(inputs["sample"], inputs["timestep"], inputs["text"], inputs["condition"], return_dict=False)
    theirs = run_theirs(theirs_unet, inputs, down_block_additional_residuals=down, mid_block_additional_residual=mid)
    summary = check("ControlNet", ours, theirs, bare)
    del controlnet, model, down, mid
    gc.collect()

    mine, other = Holder(), Holder()
    medians = rounds(
        {
            "ours": {
                "load + inject": lambda: mine.keep(ControlNet.from_diffusers(ours_unet, folder).inject()),
                "eject": lambda: mine.value.eject(),
            },
            "diffusers": {"load + inject": lambda: other.keep(ControlNetModel.from_pretrained(folder))},
        },
        {"ours": mine.drop, "diffusers": other.drop},
        repeats,
    )
    return summary, medians


def bench_t2i(
    ours_unet: Any, theirs_unet: Any, folder: Path, inputs: dict[str, torch.Tensor], repeats: int
) -> tuple[str, dict[str, dict[str, float]]]:
    """Parity check, then load+inject / eject rounds of the T2I-Adapter."""
    import diffusers
    from refiners_t2i import T2IAdapter

    bare = run_theirs(theirs_unet, inputs)
    adapter = T2IAdapter.from_diffusers(ours_unet, folder).inject()
    adapter.set_condition(inputs["condition"])
    ours = run_ours(ours_unet, inputs)
    adapter.eject()
    model = diffusers.T2IAdapter.from_pretrained(folder).eval()
    with torch.inference_mode():
        features = list(model(inputs["condition"]))
    theirs = run_theirs(theirs_unet, inputs, down_intrablock_additional_residuals=features)
    summary = check("T2I-Adapter", ours, theirs, bare)
    del adapter, model, features
    gc.collect()

    mine, other = Holder(), Holder()
    medians = rounds(
        {
            "ours": {
                "load + inject": lambda: mine.keep(T2IAdapter.from_diffusers(ours_unet, folder).inject()),
                "eject": lambda: mine.value.eject(),
            },
            "diffusers": {"load + inject": lambda: other.keep(diffusers.T2IAdapter.from_pretrained(folder))},
        },
        {"ours": mine.drop, "diffusers": other.drop},
        repeats,
    )
    return summary, medians


def bench_ip_adapter(
    ours_unet: Any, theirs_unet: Any, path: Path, inputs: dict[str, torch.Tensor], repeats: int
) -> tuple[str, dict[str, dict[str, float]]]:
    """Parity check, then load+inject / eject rounds of the IP-Adapter."""
    from refiners_ip_adapter import IPAdapter

    host = ip_adapter_host(theirs_unet)

    def load_theirs() -> None:
        host.load_ip_adapter(str(path.parent), subfolder="", weight_name=path.name, image_encoder_folder=None)

    bare = run_theirs(theirs_unet, inputs)
    adapter = IPAdapter.from_file(ours_unet, path).inject()
    adapter.set_image_embedding(inputs["image_embeds"])
    ours = run_ours(ours_unet, inputs)
    adapter.eject()
    load_theirs()
    theirs = run_theirs(theirs_unet, inputs, added_cond_kwargs={"image_embeds": [inputs["image_embeds"]]})
    host.unload_ip_adapter()
    summary = check("IP-Adapter", ours, theirs, bare)
    del adapter
    gc.collect()

    mine = Holder()
    medians = rounds(
        {
            "ours": {
                "load + inject": lambda: mine.keep(IPAdapter.from_file(ours_unet, path).inject()),
                "eject": lambda: mine.value.eject(),
            },
            "diffusers": {"load + inject": load_theirs, "eject": host.unload_ip_adapter},
        },
        {"ours": mine.drop, "diffusers": lambda: None},
        repeats,
    )
    return summary, medians


def main() -> None:
    """Write the three adapters, check parity, time both sides and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import diffusers
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # "image_encoder is not loaded" on every IP-Adapter load
    ours_unet, theirs_unet = build_unets()
    inputs = make_inputs()
    results: list[tuple[str, dict[str, dict[str, float]]]] = []
    summaries: list[str] = []
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        write_controlnet(theirs_unet, folder / "controlnet")
        gc.collect()
        summary, medians = bench_controlnet(ours_unet, theirs_unet, folder / "controlnet", inputs, args.repeats)
        summaries.append(summary)
        results.append(("ControlNet", medians))
        write_t2i(folder / "t2i")
        summary, medians = bench_t2i(ours_unet, theirs_unet, folder / "t2i", inputs, args.repeats)
        summaries.append(summary)
        results.append(("T2I-Adapter full", medians))
        write_ip_adapter(theirs_unet, folder / "ip-adapter_sd15.safetensors")
        summary, medians = bench_ip_adapter(
            ours_unet, theirs_unet, folder / "ip-adapter_sd15.safetensors", inputs, args.repeats
        )
        summaries.append(summary)
        results.append(("IP-Adapter base", medians))

    print(
        f"SD1.5 UNet fp32 CPU, torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats} after 1 warm-up"
    )
    for summary in summaries:
        print(f"- parity ({LATENT}x{LATENT} latents) {summary}")
    print()
    print("| adapter | step | ours (ms) | diffusers (ms) | diffusers / ours |")
    print("|---|---|---:|---:|---:|")
    for adapter, medians in results:
        for step, ours in medians["ours"].items():
            theirs = medians["diffusers"].get(step)
            if theirs is None:
                print(f"| {adapter} | {step} | {1000 * ours:.2f} | n/a (nothing to undo) | |")
            else:
                print(f"| {adapter} | {step} | {1000 * ours:.2f} | {1000 * theirs:.2f} | {theirs / ours:.1f}x |")


if __name__ == "__main__":
    main()
