"""``refiners generate`` end to end in subprocesses: a tiny base-model bundle, a LoRA and a ControlNet served by
the test Hub, resolved through the catalog and sha256-checked; every adapter family at once from local files;
and its one-line errors. The same stack through the library: it changes the image, and ejects exactly.

The tiny assets come from the product itself (``refiners_sd.demo``), then are served as Hub repositories.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from hub_fixtures import hub_env, hub_server, write_catalog  # noqa: F401
from hub_server import HubServer
from PIL import Image
from refiners_sd.demo import build_demo_assets
from registry_fixtures import run_cli

BASE = "test/tiny-sd15"
LORA = "test/tiny-lora"
CONTROLNET = "test/tiny-controlnet"
SDXL_LORA = "test/tiny-sdxl-lora"


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by its relative POSIX path."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def entry(name: str, family: str, base_model: str, repo_id: str, revision: str, files: dict[str, bytes]) -> Any:
    """A catalog mapping pinning every file of ``files`` by sha256."""
    return {
        "name": name,
        "family": family,
        "base_model": base_model,
        "description": f"test entry {name}",
        "license": "mit",
        "tags": ["test"],
        "source": {
            "repo_id": repo_id,
            "revision": revision,
            "files": [
                {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                for path, data in sorted(files.items())
            ],
        },
    }


@dataclass
class Served:
    env: dict[str, str]
    condition: Path
    root: Path


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return build_demo_assets(tmp_path_factory.mktemp("demo"))


@pytest.fixture
def served(assets: Any, hub_server: HubServer, hub_env: dict[str, str], tmp_path: Path) -> Served:  # noqa: F811
    assert assets.lora is not None and assets.controlnet is not None
    base_files = folder_files(assets.base)
    lora_files = {"pytorch_lora_weights.safetensors": assets.lora.read_bytes()}
    controlnet_files = folder_files(assets.controlnet)
    base_rev = hub_server.add_repo("test-org/tiny-sd15", base_files)
    lora_rev = hub_server.add_repo("test-org/tiny-lora", lora_files)
    controlnet_rev = hub_server.add_repo("test-org/tiny-controlnet", controlnet_files)
    catalog = write_catalog(
        tmp_path / "catalogs" / "generate.toml",
        [
            entry(BASE, "base-model", "sd15", "test-org/tiny-sd15", base_rev, base_files),
            entry(LORA, "lora", "sd15", "test-org/tiny-lora", lora_rev, lora_files),
            entry(CONTROLNET, "controlnet", "sd15", "test-org/tiny-controlnet", controlnet_rev, controlnet_files),
            entry(SDXL_LORA, "lora", "sdxl", "test-org/tiny-lora", lora_rev, lora_files),
        ],
    )
    env = {**hub_env, "REFINERS_CATALOG": str(catalog)}
    env.pop("REFINERS_LOAD_PLUGINS", None)
    return Served(env=env, condition=assets.condition_image, root=tmp_path)


def generate(served: Served, *args: str, env: dict[str, str] | None = None) -> Any:
    return run_cli(env or served.env, "generate", "a red cube", "--base", BASE, "--steps", "2", *args, timeout=120)


def only_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return errors[0]


def test_generate_with_lora_and_controlnet_from_the_hub(served: Served) -> None:
    output = served.root / "images" / "out.png"
    result = generate(
        served,
        "--lora",
        f"{LORA}:0.8",
        "--controlnet",
        f"{CONTROLNET}:{served.condition}:0.9",
        "--width",
        "64",
        "--height",
        "48",
        "--seed",
        "3",
        "-o",
        str(output),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == str(output)
    with Image.open(output) as image:
        assert image.format == "PNG" and image.size == (64, 48) and image.mode == "RGB"
    assert "denoising" in result.stderr and "2/2" in result.stderr
    assert f"loading controlnet {CONTROLNET}" in result.stderr


def test_missing_plugin_family_is_one_clear_line(served: Served) -> None:
    env = {**served.env, "REFINERS_LOAD_PLUGINS": "refiners-sd,refiners-lora,refiners-registry"}
    result = generate(
        served, "--controlnet", f"{CONTROLNET}:{served.condition}", "-o", str(served.root / "x.png"), env=env
    )
    assert result.returncode == 4
    assert "adapter family 'controlnet'" in only_error_line(result.stderr)
    assert not (served.root / "x.png").exists()


def test_adapter_for_another_base_model(served: Served) -> None:
    result = generate(served, "--lora", f"{SDXL_LORA}:0.5", "-o", str(served.root / "x.png"))
    assert result.returncode == 1
    assert "for sdxl, but the base model is sd15" in only_error_line(result.stderr)


def test_unreadable_image_names_the_file(served: Served) -> None:
    broken = served.root / "broken.png"
    broken.write_text("not a picture", encoding="utf-8")
    result = generate(served, "--controlnet", f"{CONTROLNET}:{broken}:0.5", "-o", str(served.root / "x.png"))
    assert result.returncode == 1
    assert f"cannot read image {broken}" in only_error_line(result.stderr)


@pytest.mark.parametrize(
    ("text", "name", "image", "scale"),
    [
        ("sd15/controlnet-canny:edges.png", "sd15/controlnet-canny", "edges.png", 1.0),
        ("sd15/controlnet-canny:/data/edges v2.png:0.5", "sd15/controlnet-canny", "/data/edges v2.png", 0.5),
        ("./cn:photo:v2.png", "./cn", "photo:v2.png", 1.0),
        ("cn:img.png:1e-1", "cn", "img.png", 0.1),
    ],
)
def test_parse_conditioned(text: str, name: str, image: str, scale: float) -> None:
    from refiners_sd.cli.specs import parse_conditioned

    spec = parse_conditioned("controlnet", text)
    assert (spec.name, str(spec.image), spec.scale) == (name, image, scale)


def test_parse_scaled_and_errors() -> None:
    from refiners_sd.cli.specs import SpecError, parse_conditioned, parse_scaled

    assert parse_scaled("lora", "sdxl/lora-lcm:0.8").scale == 0.8
    assert parse_scaled("lora", "/loras/a:b.safetensors").name == "/loras/a:b.safetensors"
    assert parse_scaled("lora", "sdxl/lora-lcm").scale == 1.0
    for bad in ("name-only", "name:", ":image.png"):
        with pytest.raises(SpecError, match="NAME:IMAGE"):
            parse_conditioned("t2i", bad)


def test_known_base_without_a_bundle_says_why(hub_env: dict[str, str]) -> None:  # noqa: F811
    from refiners_registry import Registry
    from refiners_sd.cli.runner import GenerateError, resolve_base

    registry = Registry(user=False)
    # the catalog's sdxl is a single-file checkpoint: refiners_sd.load_pipeline reads it; until --base takes
    # files (the base-model contract), the folder-only resolver says so
    with pytest.raises(GenerateError, match="sdxl is a single base-model component"):
        resolve_base("sdxl", print, registry)
    with pytest.raises(GenerateError, match="single base-model component"):
        resolve_base("sd15/unet", print, registry)


def every_family(assets: Any) -> list[str]:
    """The ``--lora``/``--controlnet``/``--t2i``/``--ip-adapter`` options of the demo assets, all four at once."""
    assert None not in (assets.lora, assets.controlnet, assets.t2i, assets.ip_adapter, assets.image_encoder)
    return [
        "--lora",
        f"{assets.lora}:0.8",
        "--controlnet",
        f"{assets.controlnet}:{assets.condition_image}:0.9",
        "--t2i",
        f"{assets.t2i}:{assets.condition_image}:0.7",
        "--ip-adapter",
        f"{assets.ip_adapter}:{assets.reference_image}:0.6",
        "--image-encoder",
        str(assets.image_encoder),
    ]


def test_generate_with_every_family_from_local_files(
    assets: Any,
    hub_env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    output = tmp_path / "every.png"
    env = {**hub_env, "HF_HUB_OFFLINE": "1"}
    env.pop("REFINERS_LOAD_PLUGINS", None)
    args = ["generate", "a red cube", "--base", str(assets.base), *every_family(assets)]
    result = run_cli(env, *args, "--steps", "2", "--width", "56", "--height", "40", "-o", str(output), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == str(output)
    with Image.open(output) as image:
        assert image.format == "PNG" and image.size == (56, 40) and image.mode == "RGB"
    for family in ("lora", "controlnet", "t2i", "ip-adapter"):
        assert f"loading {family} " in result.stderr


def test_ip_adapter_without_image_encoder_is_one_clear_line(
    assets: Any,
    hub_env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    env = {**hub_env, "HF_HUB_OFFLINE": "1"}
    env.pop("REFINERS_LOAD_PLUGINS", None)
    output = tmp_path / "x.png"
    ip_adapter = f"{assets.ip_adapter}:{assets.reference_image}"
    result = run_cli(env, "generate", "x", "--base", str(assets.base), "--ip-adapter", ip_adapter, "-o", str(output))
    assert result.returncode == 1
    assert "needs --image-encoder" in only_error_line(result.stderr)
    assert "denoising" not in result.stderr  # no empty progress bar before the error
    assert not output.exists()
    encoder_alone = ("--image-encoder", str(assets.image_encoder))
    result = run_cli(env, "generate", "x", "--base", str(assets.base), *encoder_alone, "-o", str(output))
    assert result.returncode == 1
    assert "only an --ip-adapter uses it" in only_error_line(result.stderr)


def test_every_family_changes_the_image_and_ejects_to_the_bare_unet(assets: Any) -> None:
    from refiners_sd.cli.runner import apply_adapters, remove_adapters
    from refiners_sd.cli.specs import parse_conditioned, parse_scaled
    from refiners_sd.pipeline import StableDiffusion1, load_pipeline

    model = load_pipeline(assets.base, device="cpu", dtype=torch.float32)
    assert isinstance(model, StableDiffusion1)
    width, height, guidance = 64, 48, 7.5
    options: dict[str, Any] = {"steps": 2, "guidance": guidance, "seed": 3, "width": width, "height": height}
    conditioning = model.encode_prompt("a red cube")  # [negative, prompt], as under guidance
    latents = torch.randn(2, 4, height // 8, width // 8, generator=torch.Generator().manual_seed(0))

    def unet_output() -> torch.Tensor:
        model.set_conditioning(conditioning)
        model.unet.set_timestep(torch.tensor(500))
        with torch.no_grad():
            return model.unet(latents)

    bare_image = model.generate("a red cube", **options)
    bare_output = unet_output()

    texts = every_family(assets)
    options_by_family = dict(zip(texts[0:8:2], texts[1:8:2], strict=True))
    specs = [parse_scaled("lora", options_by_family["--lora"])]
    specs += [parse_conditioned(option.removeprefix("--"), options_by_family[option])
              for option in ("--controlnet", "--t2i", "--ip-adapter")]  # fmt: skip
    adapters = apply_adapters(model, "sd15", specs, (width, height), guidance, print, str(assets.image_encoder))
    stacked_image = model.generate("a red cube", **options)
    assert stacked_image.size == bare_image.size == (width, height)
    assert stacked_image.tobytes() != bare_image.tobytes()
    stacked_output = unet_output()
    assert not torch.equal(stacked_output, bare_output)

    # each adapter is live: muting it alone changes the UNet's output
    lora, controlnet, t2i, ip_adapter = adapters
    mutes = {
        "lora": (lambda: lora.set_scale(lora.names[0], 0.0), lambda: lora.set_scale(lora.names[0], 0.8)),
        "controlnet": (lambda: setattr(controlnet, "scale", 0.0), lambda: setattr(controlnet, "scale", 0.9)),
        "t2i": (lambda: setattr(t2i, "scale", 0.0), lambda: setattr(t2i, "scale", 0.7)),
        "ip-adapter": (lambda: ip_adapter.set_scale(0.0), lambda: ip_adapter.set_scale(0.6)),
    }
    for family, (mute, restore) in mutes.items():
        mute()
        assert not torch.equal(unet_output(), stacked_output), f"{family} has no effect"
        restore()
    assert torch.equal(unet_output(), stacked_output)

    remove_adapters(adapters)
    assert torch.equal(unet_output(), bare_output)


def test_demo_assets_skip_the_adapters_of_missing_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    for plugin in ("refiners_t2i", "refiners_ip_adapter"):
        monkeypatch.setitem(sys.modules, plugin, None)  # imports of it raise ImportError, as when not installed
    assets = build_demo_assets(tmp_path)
    assert assets.lora is not None and assets.controlnet is not None
    assert (assets.t2i, assets.ip_adapter, assets.image_encoder, assets.reference_image) == (None,) * 4
    assert sorted(item.name for item in tmp_path.iterdir()) == [
        "base",
        "condition.png",
        "controlnet",
        "lora.safetensors",
    ]
