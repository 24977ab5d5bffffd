"""``refiners generate`` end to end in subprocesses: a tiny base-model bundle, a LoRA and a ControlNet served by
the test Hub, resolved through the catalog and sha256-checked; every adapter family at once from local files;
and its one-line errors. The same stack through the library: it changes the image, and ejects exactly.

The tiny assets come from the product itself (``refiners demo-assets``: the base-model and family demo hooks),
then are served as Hub repositories.
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
from registry_fixtures import run_cli

import refiners_core as rc

BASE = "test/tiny-sd15"
LORA = "test/tiny-lora"
CONTROLNET = "test/tiny-controlnet"
SDXL_LORA = "test/tiny-sdxl-lora"
UNET_FILE = "test/tiny-sd15-unet-file"


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


@dataclass
class DemoAssets:
    """The ``NAME=PATH`` lines of ``refiners demo-assets``, as attributes."""

    base: Path
    lora: Path
    controlnet: Path
    condition_image: Path
    t2i: Path
    ip_adapter: Path
    image_encoder: Path
    reference_image: Path


def build_demo_assets(folder: Path) -> DemoAssets:
    """Every installed family's demo weights for the first base model with a demo (refiners-sd's tiny SD1.5)."""
    from refiners_core.cli.demo_run import write_demo_assets

    lines: dict[str, Path] = {}

    def emit(line: str) -> None:
        name, _, path = line.partition("=")
        lines[name] = Path(path)

    assert write_demo_assets(folder, emit=emit) == []
    return DemoAssets(
        base=lines["base"],
        lora=lines["lora"],
        controlnet=lines["controlnet"],
        condition_image=lines["controlnet.image"],
        t2i=lines["t2i"],
        ip_adapter=lines["ip-adapter"],
        image_encoder=lines["ip-adapter.image_encoder"],
        reference_image=lines["ip-adapter.image"],
    )


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> DemoAssets:
    return build_demo_assets(tmp_path_factory.mktemp("demo"))


@pytest.fixture
def served(assets: Any, hub_server: HubServer, hub_env: dict[str, str], tmp_path: Path) -> Served:  # noqa: F811
    assert assets.lora is not None and assets.controlnet is not None
    base_files = folder_files(assets.base)
    unet_file = "unet/diffusion_pytorch_model.safetensors"
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
            entry(UNET_FILE, "base-model", "sd15", "test-org/tiny-sd15", base_rev, {unet_file: base_files[unet_file]}),
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
        ("sd15/controlnet-canny:edges.png", "sd15/controlnet-canny", "edges.png", None),
        ("sd15/controlnet-canny:/data/edges v2.png:0.5", "sd15/controlnet-canny", "/data/edges v2.png", 0.5),
        ("./cn:photo:v2.png", "./cn", "photo:v2.png", None),
        ("cn:img.png:1e-1", "cn", "img.png", 0.1),
        ("sdxl/lora-lcm:0.8", "sdxl/lora-lcm", None, 0.8),
        ("sdxl/lora-lcm", "sdxl/lora-lcm", None, None),
    ],
)
def test_split_spec(text: str, name: str, image: str | None, scale: float | None) -> None:
    from refiners_core.cli.adapter_specs import split_spec

    parsed_name, parsed_image, parsed_scale = split_spec(text)
    assert (parsed_name, None if parsed_image is None else str(parsed_image), parsed_scale) == (name, image, scale)


def test_parse_arguments_any_family_any_order(tmp_path: Path) -> None:
    from refiners_core.cli.adapter_specs import SpecError, UnknownFamilyOptionError, parse_arguments
    from refiners_core.plugins import adapter_families

    families = adapter_families()
    colon = tmp_path / "a:b.safetensors"
    colon.write_bytes(b"")
    tokens = ["--lora", f"{colon}:0.5", "a red cube", "--t2i-adapter=t:c.png", "--image-encoder", "enc"]
    parsed = parse_arguments(tokens, ["controlnet:cn:e.png:0.3"], ["extra=x"], families)
    assert parsed.prompt == "a red cube"
    assert [(spec.family, spec.name, spec.scale) for spec in parsed.adapters] == [
        ("lora", str(colon), 0.5),
        ("t2i", "t", 1.0),
        ("controlnet", "cn", 0.3),
    ]
    assert parsed.inputs == {"image_encoder": "enc", "extra": "x"}
    with pytest.raises(UnknownFamilyOptionError, match="'nofamily'"):
        parse_arguments(["x", "--nofamily", "y"], [], [], families)
    with pytest.raises(UnknownFamilyOptionError, match="'nofamily'"):
        parse_arguments(["x"], ["nofamily:y"], [], families)
    with pytest.raises(SpecError, match="a prompt is needed"):
        parse_arguments(["--lora", "y"], [], [], families)
    with pytest.raises(SpecError, match="FAMILY:NAME_OR_PATH"):
        parse_arguments(["x"], ["lora"], [], families)


def test_catalog_names_resolve_through_the_registry_hook(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    from refiners_core.plugins.resolution import resolve_name

    monkeypatch.setenv("REFINERS_CATALOG", served.env["REFINERS_CATALOG"])
    bundle = resolve_name(BASE)  # a base-model bundle: the pipeline folder
    assert (bundle.family, bundle.base_model) == ("base-model", "sd15") and (bundle.path / "model_index.json").is_file()
    single = resolve_name(UNET_FILE)  # a single-file base-model entry: the file
    assert (single.family, single.base_model) == ("base-model", "sd15") and single.path.name.endswith(".safetensors")
    lora = resolve_name(LORA)
    assert (lora.family, lora.base_model) == ("lora", "sd15") and lora.path.is_file()


def test_catalog_base_model_names_resolve_and_adapters_are_refused_as_base(served: Served) -> None:
    result = generate(served, "-o", str(served.root / "x.png"), "--base", LORA)
    assert result.returncode == 1
    assert "not a base model" in only_error_line(result.stderr)


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
    assert "no adapter given uses it" in only_error_line(result.stderr)


def test_every_family_changes_the_image_and_ejects_to_the_bare_unet(assets: Any) -> None:
    from refiners_sd.pipeline import StableDiffusion1, load_pipeline

    from refiners_core.cli.adapter_specs import parse_arguments
    from refiners_core.cli.generate_run import apply_adapters
    from refiners_core.plugins import adapter_families

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

    parsed = parse_arguments(["a red cube", *every_family(assets)], [], [], adapter_families())
    adapters = apply_adapters(model, parsed.adapters, parsed.inputs, (width, height), print)
    stacked_image = model.generate("a red cube", **options)
    assert stacked_image.size == bare_image.size == (width, height)
    assert stacked_image.tobytes() != bare_image.tobytes()
    stacked_output = unet_output()
    assert not torch.equal(stacked_output, bare_output)

    # each adapter is live: muting it alone (the contract's settable scale) changes the UNet's output
    for spec, adapter in zip(parsed.adapters, adapters, strict=True):
        assert isinstance(adapter, rc.LoadedAdapter)
        adapter.scale = 0.0
        assert not torch.equal(unet_output(), stacked_output), f"{spec.family} has no effect"
        adapter.scale = spec.scale
    assert torch.equal(unet_output(), stacked_output)

    for adapter in reversed(adapters):
        adapter.remove()
    assert torch.equal(unet_output(), bare_output)
    assert model.generate("a red cube", **options).tobytes() == bare_image.tobytes()


def test_demo_assets_report_a_failing_family_and_write_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from refiners_core.cli.demo_run import write_demo_assets

    monkeypatch.setitem(sys.modules, "refiners_t2i.demo", None)  # its import raises ImportError: a plugin bug
    lines: list[str] = []
    warnings: list[str] = []
    failures = write_demo_assets(tmp_path, emit=lines.append, warn=warnings.append)
    assert failures == ["t2i"]
    assert len(warnings) == 1 and "the t2i family's demo failed" in warnings[0]
    assert {line.partition("=")[0] for line in lines} >= {"base", "lora", "controlnet", "ip-adapter"}
    assert not any(line.startswith("t2i") for line in lines)
