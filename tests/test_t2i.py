"""refiners-t2i: parity with diffusers' T2IAdapter + UNet2DConditionModel on tiny SD1.5/SDXL UNets, file layouts,
stacking with other adapters, errors, and the plugin hook."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import diffusers
import pytest
import refiners_sd
import torch
from refiners_t2i import T2IAdapter, T2IFeatureAdapter, load_t2i_adapter  # noqa: E402
from refiners_t2i.injection import InjectionPoint, injected_names  # noqa: E402
from safetensors.torch import save_file
from sd_fixtures import TINY_SD15, TINY_SD15_3BLOCKS, TINY_SDXL, TINY_SDXL_3BLOCKS, make_tiny_unet, run_diffusers
from sd_fixtures import run_refiners as _run_refiners

import refiners_core as rc
from refiners_core import AdapterError, ContextError, PickleRefusedError, WeightsError

TOLERANCE = 1e-4
SCALE = 0.7
BATCH, HEIGHT, WIDTH = 2, 16, 24  # latents; condition images are 8x larger

# name: (UNet config, diffusers T2IAdapter kwargs, expected injection points (feature, block; None = middle))
CASES: dict[str, tuple[dict[str, Any], dict[str, Any], list[tuple[int, int | None]]]] = {
    "sd15-full": (
        TINY_SD15_3BLOCKS,
        {"adapter_type": "full_adapter", "channels": [32, 32, 64], "num_res_blocks": 2},
        [(0, 0), (1, 1), (2, 2)],
    ),
    "sd15-full-gray": (
        TINY_SD15,
        {"adapter_type": "full_adapter", "channels": [32, 64], "num_res_blocks": 1, "in_channels": 1},
        [(0, 0), (1, 1)],
    ),
    # 3 features for 2 blocks: the third does not match the middle block (1/32 vs 1/16): unused, as in diffusers
    "sd15-light": (
        TINY_SD15,
        {"adapter_type": "light_adapter", "channels": [32, 64], "num_res_blocks": 2},
        [(0, 0), (1, 1)],
    ),
    # block 0 has no attention: its feature is added after its downsampler
    "sdxl-xl": (
        TINY_SDXL,
        {"adapter_type": "full_adapter_xl", "channels": [32, 64], "num_res_blocks": 2, "downscale_factor": 16},
        [(0, 0), (1, 1)],
    ),
    # 4 features for 3 blocks: the fourth goes to the middle block
    "sdxl-xl-mid": (
        TINY_SDXL_3BLOCKS,
        {"adapter_type": "full_adapter_xl", "channels": [32, 32, 64, 64], "num_res_blocks": 2, "downscale_factor": 16},
        [(0, 0), (1, 1), (2, 2), (3, None)],
    ),
}

MAX_DIFFS: dict[str, float] = {}


class Case(NamedTuple):
    unet_model: Any  # diffusers UNet2DConditionModel
    unet_path: Path
    inputs: dict[str, torch.Tensor]
    adapter: Any  # diffusers T2IAdapter
    adapter_path: Path  # save_pretrained folder
    image: torch.Tensor
    points: list[tuple[int, int | None]]
    directory: Path


def make_adapter(directory: Path, seed: int = 0, **kwargs: Any) -> tuple[Any, Path]:
    """A diffusers T2IAdapter with perturbed random weights, saved with save_pretrained."""
    torch.manual_seed(seed)
    adapter = diffusers.T2IAdapter(**kwargs).eval()
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    path = directory / f"adapter_{seed}"
    adapter.save_pretrained(path)
    return adapter, path


def make_image(adapter: Any, batch: int = BATCH, seed: int = 5) -> torch.Tensor:
    channels = adapter.config.in_channels
    return torch.rand(batch, channels, HEIGHT * 8, WIDTH * 8, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Case]:
    built: dict[str, Case] = {}

    def get(name: str) -> Case:
        if name not in built:
            unet_config, kwargs, points = CASES[name]
            directory = tmp_path_factory.mktemp(name)
            model, path, inputs = make_tiny_unet(directory, unet_config, batch=BATCH, height=HEIGHT, width=WIDTH)
            adapter, adapter_path = make_adapter(directory, **kwargs)
            built[name] = Case(model, path, inputs, adapter, adapter_path, make_image(adapter), points, directory)
        return built[name]

    return get


def run_refiners(unet: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return _run_refiners(unet, inputs)


@torch.no_grad()
def diffusers_reference(case: Case, *adapters: tuple[Any, torch.Tensor, float]) -> torch.Tensor:
    """diffusers UNet with ``down_intrablock_additional_residuals`` = sum of ``scale * adapter(image)``."""
    summed: list[torch.Tensor] | None = None
    for adapter, image, scale in adapters:
        features = [feature * scale for feature in adapter(image)]
        summed = features if summed is None else [a + b for a, b in zip(summed, features, strict=False)]
    return run_diffusers(case.unet_model, case.inputs, down_intrablock_additional_residuals=summed)


def snapshot(unet: Any) -> tuple[list[int], list[str], dict[str, torch.Tensor]]:
    """Identity of every module, state-dict keys and values."""
    state = unet.state_dict()
    return [id(m) for m in unet.modules()], list(state), {key: value.clone() for key, value in state.items()}


def assert_same(unet: Any, before: tuple[list[int], list[str], dict[str, torch.Tensor]]) -> None:
    after = snapshot(unet)
    assert after[0] == before[0]
    assert after[1] == before[1]
    for key, value in before[2].items():
        assert torch.equal(after[2][key], value), key


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


# ---- parity ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_parity_with_diffusers(cases: Callable[[str], Case], name: str) -> None:
    case = cases(name)
    unet = refiners_sd.load_unet(case.unet_path)
    bare = run_refiners(unet, case.inputs)
    before = snapshot(unet)

    adapter = T2IAdapter.from_diffusers(unet, case.adapter_path, name="cond", scale=SCALE)
    assert [tuple(point) for point in adapter.injection_points] == case.points
    assert adapter.config.adapter_type == case.adapter.config.adapter_type
    assert not adapter.is_injected
    assert_same(unet, before)  # loading does not touch the UNet

    adapter.inject()
    with torch.no_grad():
        features = adapter.set_condition(case.image)
        for ours, theirs in zip(features, case.adapter(case.image), strict=True):
            assert max_diff(ours, theirs) < 1e-5
    diff = max_diff(run_refiners(unet, case.inputs), diffusers_reference(case, (case.adapter, case.image, SCALE)))
    MAX_DIFFS[name] = diff
    assert diff < TOLERANCE, diff
    assert list(unet.state_dict()) == before[1]  # the injected layers hold no parameters

    adapter.scale = 0.0
    assert torch.equal(run_refiners(unet, case.inputs), bare)
    adapter.scale = 1.3
    expected = diffusers_reference(case, (case.adapter, case.image, 1.3))
    assert max_diff(run_refiners(unet, case.inputs), expected) < TOLERANCE

    adapter.eject()
    assert_same(unet, before)
    assert torch.equal(run_refiners(unet, case.inputs), bare)
    # re-injecting keeps the condition
    adapter.inject()
    assert max_diff(run_refiners(unet, case.inputs), expected) < TOLERANCE
    adapter.eject()
    assert_same(unet, before)


def test_feature_points_are_where_diffusers_adds_them(cases: Callable[[str], Case]) -> None:
    case = cases("sdxl-xl-mid")
    unet = refiners_sd.load_unet(case.unet_path)
    adapter = T2IAdapter.from_diffusers(unet, case.adapter_path, name="canny").inject()
    injectors = list(unet.layers(T2IFeatureAdapter))
    assert [type(injector.target).__name__ for injector in injectors] == [
        "ResidualAccumulator",
        "ResidualAccumulator",
        "ResidualAccumulator",
        "AddResidual",
    ]
    # SDXL block 0 (no attention): after its downsampler; blocks 1 and 2: after their last resnet/attention
    parents = [type(rc.get_parent(injector)).__name__ for injector in injectors]
    assert parents == ["DownsampleLayer", "DownLayer", "DownLayer", "SDXLUNet"]
    text = repr(unet)
    assert "T2IFeatureAdapter" in text and "UseT2IFeature" in text and "key='canny'" in text
    adapter.eject()
    assert "T2IFeature" not in repr(unet)


# ---- file layouts ----------------------------------------------------------------------------------


def to_tencentarc(state: dict[str, torch.Tensor], num_res_blocks: int, light: bool) -> dict[str, torch.Tensor]:
    """The original TencentARC layout of a diffusers T2IAdapter state dict (written for this test)."""
    converted = {}
    for key, value in state.items():
        parts = key.removeprefix("adapter.").split(".")
        if parts[0] == "conv_in":
            converted[".".join(parts)] = value
        elif light:  # body.i.resnets.j.blockX -> body.i.body.j.blockX
            converted[".".join(["body", parts[1], *(["body", *parts[3:]] if parts[2] == "resnets" else parts[2:])])] = (
                value
            )
        elif parts[2] == "in_conv":  # body.i.in_conv -> body.(i*r).in_conv
            converted[f"body.{int(parts[1]) * num_res_blocks}.in_conv.{parts[3]}"] = value
        else:  # body.i.resnets.j.blockX -> body.(i*r+j).blockX
            converted[f"body.{int(parts[1]) * num_res_blocks + int(parts[3])}.{parts[4]}.{parts[5]}"] = value
    return converted


@pytest.mark.parametrize("name", ["sd15-full", "sd15-light", "sdxl-xl", "sdxl-xl-mid"])
def test_single_files_diffusers_and_tencentarc(cases: Callable[[str], Case], name: str) -> None:
    case = cases(name)
    unet = refiners_sd.load_unet(case.unet_path)
    reference = T2IAdapter.from_diffusers(unet, case.adapter_path)
    expected_features = [f.clone() for f in reference.set_condition(case.image)]

    state = {key: value.contiguous() for key, value in case.adapter.state_dict().items()}
    files = case.directory / "files"
    files.mkdir(exist_ok=True)
    save_file(state, files / "diffusers_keys.safetensors")  # no config.json: inferred from shapes (+ the UNet)
    sources: list[Any] = [files / "diffusers_keys.safetensors", state]
    if not name.startswith("sdxl"):  # TencentARC published SD1.x adapters in their own layout
        light = case.adapter.config.adapter_type == "light_adapter"
        original = to_tencentarc(state, case.adapter.config.num_res_blocks, light)
        assert "conv_in.weight" in original or light
        save_file(original, files / "tencentarc.safetensors")
        sources.append(files / "tencentarc.safetensors")
    for source in sources:
        adapter = T2IAdapter.from_diffusers(unet, source)
        assert adapter.config == reference.config, source
        for ours, theirs in zip(adapter.set_condition(case.image), expected_features, strict=True):
            assert torch.equal(ours, theirs), source


@pytest.mark.parametrize("name", ["sd15-full-gray", "sd15-light", "sdxl-xl"])
def test_save_diffusers_round_trips_through_diffusers(cases: Callable[[str], Case], name: str) -> None:
    case = cases(name)
    unet = refiners_sd.load_unet(case.unet_path)
    adapter = T2IAdapter.from_diffusers(unet, case.adapter_path)
    saved = adapter.save_diffusers(case.directory / f"saved_{name}")
    assert sorted(item.name for item in saved.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    theirs = diffusers.T2IAdapter.from_pretrained(saved).eval()
    assert theirs.config.adapter_type == case.adapter.config.adapter_type
    reloaded = T2IAdapter.from_diffusers(unet, saved)
    assert reloaded.config == adapter.config
    with torch.no_grad():
        for ours, expected in zip(reloaded.set_condition(case.image), theirs(case.image), strict=True):
            assert max_diff(ours, expected) < 1e-5


def test_tencentarc_full_adapter_levels_from_num_res_blocks(cases: Callable[[str], Case]) -> None:
    case = cases("sd15-full")
    unet = refiners_sd.load_unet(case.unet_path)
    original = to_tencentarc(dict(case.adapter.state_dict()), 2, light=False)  # 6 resnets
    with pytest.raises(WeightsError, match="in_conv on a resnet that does not start a level"):
        T2IAdapter.from_diffusers(unet, original, num_res_blocks=3)
    adapter = T2IAdapter.from_diffusers(unet, original, num_res_blocks=2)
    assert adapter.config.num_res_blocks == 2 and len(adapter.config.channels) == 3


def test_weights_on_the_unet_dtype_and_device(cases: Callable[[str], Case]) -> None:
    case = cases("sd15-light")
    unet = refiners_sd.load_unet(case.unet_path, dtype=torch.bfloat16)
    adapter = T2IAdapter.from_diffusers(unet, case.adapter_path).inject()
    assert {p.dtype for p in adapter.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in adapter.parameters())
    adapter.set_condition(case.image)  # float32 image: converted
    inputs = {
        key: value.to(torch.bfloat16) if value.is_floating_point() else value for key, value in case.inputs.items()
    }  # noqa: E501
    output = run_refiners(unet, inputs)
    expected = diffusers_reference(case, (case.adapter, case.image, 1.0))
    assert output.dtype == torch.bfloat16 and max_diff(output.float(), expected) < 0.1
    # the network may run in another dtype: its features are cast to the UNet's
    other = T2IAdapter(unet, adapter.config, name="f64", dtype=torch.float64)
    assert {p.dtype for p in other.parameters()} == {torch.float64}
    assert {f.dtype for f in other.set_condition(case.image)} == {torch.bfloat16}


# ---- several adapters, ControlNet, LoRA ------------------------------------------------------------


def test_two_t2i_adapters_add_up_and_eject_in_any_order(cases: Callable[[str], Case]) -> None:
    case = cases("sd15-light")  # TINY_SD15; a full adapter fits it too
    full, full_path = make_adapter(case.directory, seed=1, adapter_type="full_adapter", channels=[32, 64])
    full_image = make_image(full, batch=1, seed=9)  # batch 1: broadcast over the latents' batch
    unet = refiners_sd.load_unet(case.unet_path)
    before = snapshot(unet)
    bare = run_refiners(unet, case.inputs)

    light = T2IAdapter.from_diffusers(unet, case.adapter_path, name="light", scale=0.6)
    other = T2IAdapter.from_diffusers(unet, full_path, name="full", scale=0.9)
    rc.inject_adapters([light, other])  # the core helper works with T2I adapters
    light.set_condition(case.image)
    other.set_condition(full_image)
    expected = diffusers_reference(case, (case.adapter, case.image, 0.6), (full, full_image, 0.9))
    assert max_diff(run_refiners(unet, case.inputs), expected) < TOLERANCE

    same_name = T2IAdapter.from_diffusers(unet, full_path, name="full")
    snap = snapshot(unet)
    with pytest.raises(AdapterError, match="named 'full' is injected"):
        same_name.inject()
    assert_same(unet, snap)

    light.eject()  # first injected, first ejected: the other one's layers stay in place
    expected = diffusers_reference(case, (full, full_image, 0.9))
    assert max_diff(run_refiners(unet, case.inputs), expected) < TOLERANCE
    other.eject()
    assert_same(unet, before)
    assert torch.equal(run_refiners(unet, case.inputs), bare)


def test_injection_is_all_or_nothing(cases: Callable[[str], Case], monkeypatch: pytest.MonkeyPatch) -> None:
    case = cases("sdxl-xl-mid")
    unet = refiners_sd.load_unet(case.unet_path)
    adapter = T2IAdapter.from_diffusers(unet, case.adapter_path)
    before = snapshot(unet)
    original = T2IFeatureAdapter.inject
    calls = []

    def failing(self: Any, *args: Any) -> Any:
        calls.append(self)
        if len(calls) == 3:
            raise AdapterError("boom")
        return original(self, *args)

    monkeypatch.setattr(T2IFeatureAdapter, "inject", failing)
    with pytest.raises(AdapterError, match="boom"):
        adapter.inject()
    assert_same(unet, before)
    assert not adapter.is_injected and not list(unet.layers(T2IFeatureAdapter))


def test_with_lora_and_controlnet(cases: Callable[[str], Case]) -> None:
    """A T2I-Adapter, a LoRA and a ControlNet on one UNet vs diffusers (ControlNet part skipped without the plugin)."""
    import peft
    from refiners_lora import LoraManager

    case = cases("sd15-full")
    model = diffusers.UNet2DConditionModel.from_pretrained(case.unet_path).eval()  # a private copy to patch
    unet = refiners_sd.load_unet(case.unet_path)
    before = snapshot(unet)
    bare = run_refiners(unet, case.inputs)
    controlnet_kwargs, controlnet = _controlnet_for(case, model, unet)

    # alpha = rank: what a diffusers LoRA file without metadata implies
    model.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1"]))
    with torch.no_grad():
        for key, parameter in model.named_parameters():
            if "lora_B" in key:
                parameter.copy_(torch.randn_like(parameter) * 0.1)
    lora_state = peft.utils.get_peft_model_state_dict(model)
    lora_file = case.directory / "lora.safetensors"
    save_file({f"unet.{key}": value.contiguous() for key, value in lora_state.items()}, lora_file)

    t2i = T2IAdapter.from_diffusers(unet, case.adapter_path, name="t2i", scale=SCALE).inject()
    t2i.set_condition(case.image)
    loras = LoraManager(unet)
    loras.add("lora", lora_file)
    with torch.no_grad():
        features = [feature * SCALE for feature in case.adapter(case.image)]
        expected = run_diffusers(model, case.inputs, down_intrablock_additional_residuals=features, **controlnet_kwargs)
    diff = max_diff(run_refiners(unet, case.inputs), expected)
    MAX_DIFFS["sd15-full+lora" + ("+controlnet" if controlnet is not None else "")] = diff
    assert diff < TOLERANCE

    t2i.eject()  # any order
    if controlnet is not None:
        controlnet.eject()
    loras.remove_all()
    assert_same(unet, before)
    assert torch.equal(run_refiners(unet, case.inputs), bare)


def _controlnet_for(case: Case, model: Any, unet: Any) -> tuple[dict[str, Any], Any]:
    """A tiny diffusers ControlNet from ``model``, its residuals as diffusers kwargs, ours injected in ``unet``."""
    try:
        from refiners_controlnet import load_controlnet
    except ImportError:
        return {}, None
    torch.manual_seed(3)
    controlnet = diffusers.ControlNetModel.from_unet(model, conditioning_embedding_out_channels=(8, 8, 16, 16)).eval()
    with torch.no_grad():
        for parameter in controlnet.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    path = case.directory / "controlnet"
    controlnet.save_pretrained(path)
    condition = torch.rand(BATCH, 3, HEIGHT * 8, WIDTH * 8, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        down, mid = controlnet(
            case.inputs["sample"],
            case.inputs["timestep"],
            encoder_hidden_states=case.inputs["encoder_hidden_states"],
            controlnet_cond=condition,
            conditioning_scale=0.8,
            return_dict=False,
        )
    ours = load_controlnet(unet, path, name="control", scale=0.8, condition=condition)
    return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}, ours


# ---- registry and loader ---------------------------------------------------------------------------


def test_loader_and_registry_load_adapter(cases: Callable[[str], Case]) -> None:
    case = cases("sdxl-xl-mid")
    unet = refiners_sd.load_unet(case.unet_path)
    before = snapshot(unet)
    weights = case.adapter_path / "diffusion_pytorch_model.safetensors"
    adapter = load_t2i_adapter(unet, weights, scale=SCALE, condition=case.image)
    assert adapter.is_injected and adapter.name == weights.parent.name
    expected = diffusers_reference(case, (case.adapter, case.image, SCALE))
    assert max_diff(run_refiners(unet, case.inputs), expected) < TOLERANCE
    second = load_t2i_adapter(unet, case.adapter_path, scale=0.0)  # a free name is picked
    assert second.name == f"{weights.parent.name}_2"
    second.eject()
    adapter.eject()
    assert_same(unet, before)

    import refiners_registry as registry

    for family in ("t2i", "t2i-adapter"):
        loaded = registry.load_adapter(unet, weights, family=family, name="reg", scale=SCALE)
        assert isinstance(loaded, T2IAdapter) and loaded.is_injected
        loaded.set_condition(case.image)
        assert max_diff(run_refiners(unet, case.inputs), expected) < TOLERANCE
        loaded.eject()
    assert_same(unet, before)


def test_plugin_declares_the_family_without_importing_torch() -> None:
    code = (
        "import sys, refiners_t2i.plugin as p; f = p.refiners_adapter_families()[0]; "
        "print(f.name, f.loader, ','.join(f.formats), ','.join(f.base_models), ','.join(f.aliases), "
        "'torch' in sys.modules)"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split() == [
        "t2i",
        "refiners_t2i.loader:load_t2i_adapter",
        "diffusers,tencentarc",
        "sd15,sdxl",
        "t2i-adapter",
        "False",
    ]


def test_plugin_manager_finds_the_t2i_family() -> None:
    from refiners_core.plugins import adapter_families

    families = adapter_families()
    assert families["t2i"].name == "t2i" and families["t2i"].load_loader() is load_t2i_adapter


# ---- errors ----------------------------------------------------------------------------------------


def test_adapter_that_does_not_fit_the_unet(cases: Callable[[str], Case]) -> None:
    sd15, sdxl = cases("sd15-full"), cases("sdxl-xl-mid")
    unet = refiners_sd.load_unet(sdxl.unet_path)
    before = snapshot(unet)
    with pytest.raises(AdapterError, match="does not fit the sdxl UNet.*feature 1"):
        T2IAdapter.from_diffusers(unet, sd15.adapter_path)
    # no config: the same tensors as a full_adapter_xl (32, 32, 64) would fit, and are taken as such
    assert T2IAdapter.from_diffusers(unet, dict(sd15.adapter.state_dict())).config.adapter_type == "full_adapter_xl"
    gray = cases("sd15-full-gray").adapter  # (32, 64): neither as full nor as XL
    with pytest.raises(AdapterError, match="does not fit"):
        T2IAdapter.from_diffusers(unet, dict(gray.state_dict()))
    with pytest.raises(AdapterError, match="refiners-sd UNet"):
        load_t2i_adapter(rc.Chain(rc.Linear(2, 2)), sd15.adapter_path)
    assert_same(unet, before)


def test_weight_errors_name_the_keys(cases: Callable[[str], Case], tmp_path: Path) -> None:
    case = cases("sd15-full")
    unet = refiners_sd.load_unet(case.unet_path)
    state = dict(case.adapter.state_dict())
    broken = {k: v for k, v in state.items() if k != "adapter.body.1.resnets.0.block2.bias"}
    broken["adapter.extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match=r"missing keys: adapter\.body\.1\.resnets\.0\.block2\.bias") as error:
        T2IAdapter.from_diffusers(unet, broken, adapter_type="full_adapter")
    assert "unexpected keys: adapter.extra.weight" in str(error.value)
    misshapen = {**state, "adapter.body.0.resnets.0.block1.bias": torch.zeros(7)}
    with pytest.raises(WeightsError, match=r"shape mismatch: adapter\.body\.0\.resnets\.0\.block1\.bias"):
        T2IAdapter.from_diffusers(unet, misshapen)
    with pytest.raises(WeightsError, match="has adapter.conv_in: it is a full_adapter or full_adapter_xl, not a light"):
        T2IAdapter.from_diffusers(unet, state, adapter_type="light_adapter")
    with pytest.raises(ValueError, match="adapter_type 'fulll' is not one of"):
        T2IAdapter.from_diffusers(unet, state, adapter_type="fulll")
    with pytest.raises(WeightsError, match="not a T2I-Adapter of a known layout"):
        T2IAdapter.from_diffusers(unet, {"down_blocks.0.weight": torch.zeros(1)})
    with pytest.raises(WeightsError, match="no T2I-Adapter weight file"):
        T2IAdapter.from_diffusers(unet, tmp_path)
    torch.save(state, tmp_path / "adapter.bin")
    with pytest.raises(PickleRefusedError):
        T2IAdapter.from_diffusers(unet, tmp_path / "adapter.bin")
    adapter = T2IAdapter.from_diffusers(unet, tmp_path / "adapter.bin", allow_pickle=True)
    assert adapter.config.channels == (32, 32, 64)


def test_condition_errors(cases: Callable[[str], Case]) -> None:
    case = cases("sd15-full-gray")
    unet = refiners_sd.load_unet(case.unet_path)
    adapter = T2IAdapter.from_diffusers(unet, case.adapter_path, name="gray").inject()
    with pytest.raises(ContextError, match="'gray' has no condition: call adapter.set_condition"):
        run_refiners(unet, case.inputs)
    with pytest.raises(ValueError, match=r"takes \[B, 1, H, W\]"):
        adapter.set_condition(torch.rand(1, 3, HEIGHT * 8, WIDTH * 8))
    with pytest.raises(ValueError, match="multiples of 8"):
        adapter.set_condition(torch.rand(1, 1, 100, WIDTH * 8))
    adapter.set_condition(torch.rand(1, 1, HEIGHT * 4, WIDTH * 4))  # valid image, wrong size for these latents
    with pytest.raises(ValueError, match="feature 0 has shape .* the condition image must be"):
        run_refiners(unet, case.inputs)
    adapter.set_condition(torch.rand(3, 1, HEIGHT * 8, WIDTH * 8))  # batch 3 for latents of batch 2
    with pytest.raises(ValueError, match="feature 0"):
        run_refiners(unet, case.inputs)


def test_condition_batch_is_tiled_for_guidance(cases: Callable[[str], Case]) -> None:
    case = cases("sd15-full-gray")
    unet = refiners_sd.load_unet(case.unet_path)
    adapter = T2IAdapter.from_diffusers(unet, case.adapter_path).inject()
    image = case.image[:1]
    adapter.set_condition(image)  # batch 1 for latents of batch 2: broadcast
    expected = diffusers_reference(case, (case.adapter, torch.cat([image, image]), 1.0))
    assert max_diff(run_refiners(unet, case.inputs), expected) < TOLERANCE
    inputs = {key: torch.cat([value, value]) for key, value in case.inputs.items()}  # batch 4 = [2; 2]
    adapter.set_condition(case.image)
    with torch.no_grad():
        features = [torch.cat([f, f]) for f in case.adapter(case.image)]
        expected = run_diffusers(case.unet_model, inputs, down_intrablock_additional_residuals=features)
    assert max_diff(run_refiners(unet, inputs), expected) < TOLERANCE


def test_injection_point_description() -> None:
    assert InjectionPoint(3, None).describe() == "middle block"
    assert InjectionPoint(1, 1).describe() == "down block 1"


def test_report_max_diffs() -> None:
    """Prints the parity numbers gathered above (run with -s)."""
    for name, diff in MAX_DIFFS.items():
        print(f"t2i parity {name}: max abs diff {diff:.3g}")


def test_pil_condition_equals_the_equivalent_tensor(cases: Callable[[str], Case]) -> None:
    from PIL import Image

    case = cases("sd15-full-gray")  # one-channel condition: an RGB PIL image is converted to grayscale
    unet = refiners_sd.load_unet(case.unet_path)
    adapter = T2IAdapter.from_diffusers(unet, case.adapter_path, name="gray").inject()
    gray = (case.image[0, 0] * 255).round().to(torch.uint8)
    adapter.set_image(Image.fromarray(gray.numpy(), mode="L").convert("RGB"))
    from_pil = run_refiners(unet, case.inputs)
    adapter.set_condition(gray[None, None].float() / 255)
    from_tensor = run_refiners(unet, case.inputs)
    assert torch.equal(from_pil, from_tensor)
    adapter.remove()
    assert injected_names(unet) == []
