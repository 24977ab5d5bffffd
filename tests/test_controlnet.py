"""refiners-controlnet: parity with diffusers ControlNets on tiny SD1.5/SDXL UNets, original-layout files,
several ControlNets, scale, guess mode, exact eject, errors, plugin hook and registry loading."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hub_fixtures
import pytest
import refiners_sd
import torch
from refiners_controlnet import ControlNet, load_controlnet
from refiners_sd.unet.layers import ResetResiduals
from safetensors.torch import load_file, save_file
from sd_fixtures import TINY_SD15, TINY_SD15_3BLOCKS, TINY_SDXL, make_tiny_unet, run_diffusers, run_refiners

from refiners_core import AdapterError, ContextError, PickleRefusedError, WeightsError

hub_server = hub_fixtures.hub_server  # fixtures for the registry test
hub_env = hub_fixtures.hub_env

TOLERANCE = 1e-4
HEIGHT, WIDTH = 8, 12  # latent size; conditions are 8x larger
COND_CHANNELS = (8, 16, 16, 16)  # a small condition encoder with diffusers' 8x downscale


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    value = (a - b).abs().max().item()
    print(f"max abs diff {value:.2e}")  # shown with pytest -s
    return value


# ---- fixtures: a tiny diffusers UNet and two diffusers ControlNets made from it ---------------------------


@dataclass
class Case:
    model: Any  # diffusers UNet2DConditionModel
    unet_path: Path
    inputs: dict[str, torch.Tensor]
    controlnets: list[Any]  # diffusers ControlNetModel x2
    folders: list[Path]  # their save_pretrained folders
    conditions: list[torch.Tensor]  # [B, 3, 8H, 8W] in [0, 1]
    config: dict[str, Any]

    def unet(self) -> Any:
        return refiners_sd.load_unet(self.unet_path)

    def added(self) -> dict[str, torch.Tensor] | None:
        return {key: self.inputs[key] for key in ("text_embeds", "time_ids") if key in self.inputs} or None

    @torch.no_grad()
    def residuals(self, index: int, scale: float = 1.0, guess_mode: bool = False) -> tuple[Any, Any]:
        """Residuals of diffusers ControlNet ``index`` (down tuple, mid)."""
        return self.controlnets[index](
            self.inputs["sample"],
            self.inputs["timestep"],
            self.inputs["encoder_hidden_states"],
            self.conditions[index],
            conditioning_scale=scale,
            added_cond_kwargs=self.added(),
            guess_mode=guess_mode,
            return_dict=False,
        )

    def expected(self, down: Any, mid: Any) -> torch.Tensor:
        """The diffusers UNet fed the ControlNet residuals."""
        return run_diffusers(
            self.model,
            self.inputs,
            down_block_additional_residuals=tuple(down),
            mid_block_additional_residual=mid,
        )


def _controlnet(model: Any, seed: int) -> Any:
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(model, conditioning_embedding_out_channels=COND_CHANNELS).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # re-randomise the zero-initialised convolutions (and move the copied weights)
        for parameter in controlnet.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return controlnet


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Case:
    config = {"sd15": TINY_SD15, "sdxl": TINY_SDXL}[request.param]
    directory = tmp_path_factory.mktemp(request.param)
    model, unet_path, inputs = make_tiny_unet(directory, config, batch=2, height=HEIGHT, width=WIDTH)
    controlnets = [_controlnet(model, seed) for seed in (10, 11)]
    folders = []
    for index, controlnet in enumerate(controlnets):
        folders.append(directory / f"controlnet{index}")
        controlnet.save_pretrained(folders[-1])
    generator = torch.Generator().manual_seed(12)
    conditions = [torch.rand(2, 3, 8 * HEIGHT, 8 * WIDTH, generator=generator) for _ in range(2)]
    return Case(model, unet_path, inputs, controlnets, folders, conditions, config)


# ---- the original lllyasviel layout, written from diffusers' documented conversion facts ------------------

_RESNET_TO_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def to_original_layout(state_dict: dict[str, torch.Tensor], layers_per_block: int) -> dict[str, torch.Tensor]:
    """diffusers ControlNet names -> ``control_model.*`` names of the original releases (test-side mapping)."""
    hint_blocks = len({key.split(".")[2] for key in state_dict if key.startswith("controlnet_cond_embedding.blocks.")})
    converted: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        name = key
        fixed = {
            "time_embedding.linear_1.": "time_embed.0.",
            "time_embedding.linear_2.": "time_embed.2.",
            "add_embedding.linear_1.": "label_emb.0.0.",
            "add_embedding.linear_2.": "label_emb.0.2.",
            "conv_in.": "input_blocks.0.0.",
            "controlnet_mid_block.": "middle_block_out.0.",
            "controlnet_cond_embedding.conv_in.": "input_hint_block.0.",
            "controlnet_cond_embedding.conv_out.": f"input_hint_block.{2 * (hint_blocks + 1)}.",
            "mid_block.resnets.0.": "middle_block.0.",
            "mid_block.attentions.0.": "middle_block.1.",
            "mid_block.resnets.1.": "middle_block.2.",
        }
        for old, new in fixed.items():
            if name.startswith(old):
                name = new + name[len(old) :]
                break
        if match := re.match(r"controlnet_cond_embedding\.blocks\.(\d+)\.(.*)", name):
            name = f"input_hint_block.{2 * (int(match.group(1)) + 1)}.{match.group(2)}"
        elif match := re.match(r"controlnet_down_blocks\.(\d+)\.(.*)", name):
            name = f"zero_convs.{match.group(1)}.0.{match.group(2)}"
        elif match := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", name):
            block, kind, index, rest = int(match.group(1)), match.group(2), int(match.group(3)), match.group(4)
            position = 1 + block * (layers_per_block + 1) + index
            if kind == "resnets":
                head, _, tail = rest.partition(".")
                name = f"input_blocks.{position}.0.{_RESNET_TO_LDM[head]}.{tail}"
            else:
                name = f"input_blocks.{position}.1.{rest}"
        elif match := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", name):
            position = 1 + int(match.group(1)) * (layers_per_block + 1) + layers_per_block
            name = f"input_blocks.{position}.0.op.{match.group(2)}"
        if match := re.match(r"middle_block\.([02])\.(\w+)\.(.*)", name):
            if match.group(2) in _RESNET_TO_LDM:
                name = f"middle_block.{match.group(1)}.{_RESNET_TO_LDM[match.group(2)]}.{match.group(3)}"
        converted["control_model." + name] = value
    return converted


# ---- parity -----------------------------------------------------------------------------------------------


def test_parity_from_diffusers_folder(case: Case) -> None:
    unet = case.unet()
    controlnet = ControlNet.from_diffusers(unet, case.folders[0], name="first").inject()
    controlnet.set_condition(case.conditions[0])
    assert max_diff(run_refiners(unet, case.inputs), case.expected(*case.residuals(0))) < TOLERANCE
    controlnet.scale = 0.6  # settable at any time
    assert max_diff(run_refiners(unet, case.inputs), case.expected(*case.residuals(0, scale=0.6))) < TOLERANCE
    controlnet.guess_mode = True
    expected = case.expected(*case.residuals(0, scale=0.6, guess_mode=True))
    assert max_diff(run_refiners(unet, case.inputs), expected) < TOLERANCE
    assert "ControlNet(name='first', scale=0.6, guess_mode=True)" in repr(unet)


def test_parity_from_original_layout_single_file(case: Case, tmp_path: Path) -> None:
    state = to_original_layout(case.controlnets[1].state_dict(), layers_per_block=case.config["layers_per_block"])
    state["model.diffusion_model.out.0.weight"] = torch.zeros(4)  # a full checkpoint also holds other models
    path = tmp_path / "control_tiny.safetensors"
    save_file(state, path)
    unet = case.unet()
    controlnet = load_controlnet(unet, path, scale=0.8, condition=case.conditions[1])  # no config: shapes
    assert controlnet.name == "control_tiny" and controlnet.is_injected
    assert max_diff(run_refiners(unet, case.inputs), case.expected(*case.residuals(1, scale=0.8))) < TOLERANCE


def test_two_controlnets_match_multicontrolnet(case: Case) -> None:
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    with torch.no_grad():
        down, mid = MultiControlNetModel(case.controlnets)(
            case.inputs["sample"],
            case.inputs["timestep"],
            case.inputs["encoder_hidden_states"],
            case.conditions,
            [0.7, 1.3],
            added_cond_kwargs=case.added(),
            return_dict=False,
        )
    expected = case.expected(down, mid)
    unet = case.unet()
    bare = run_refiners(unet, case.inputs)
    keys = list(unet.state_dict())
    adapters = [
        ControlNet.from_diffusers(unet, folder, name=f"cn{index}", scale=scale)
        for index, (folder, scale) in enumerate(zip(case.folders, [0.7, 1.3], strict=True))
    ]
    for adapter, condition in zip(adapters, case.conditions, strict=True):
        adapter.set_condition(condition)
    for order in ([0, 1], [1, 0]):
        for adapter in adapters:
            adapter.inject()
        assert max_diff(run_refiners(unet, case.inputs), expected) < TOLERANCE
        for index in order:  # eject in any order
            adapters[index].eject()
        assert type(unet[0]) is ResetResiduals and list(unet.state_dict()) == keys
    assert torch.equal(run_refiners(unet, case.inputs), bare)


def test_scale_zero_equals_bare_unet_and_eject_restores_exactly(case: Case) -> None:
    unet = case.unet()
    bare = run_refiners(unet, case.inputs)
    children = list(unet)
    keys = list(unet.state_dict())
    cross_attentions, block_end = unet.cross_attentions(), unet.down_block_end(0)
    controlnet = ControlNet.from_diffusers(unet, case.folders[0], scale=0.0).inject()
    controlnet.set_condition(case.conditions[0])
    assert torch.equal(run_refiners(unet, case.inputs), bare)
    # other adapters still find the UNet's own layers, not the ControlNet's copy
    assert unet.cross_attentions() == cross_attentions and unet.down_block_end(0) is block_end
    controlnet.scale = 1.0
    assert not torch.equal(run_refiners(unet, case.inputs), bare)
    controlnet.eject()
    assert list(unet) == children and all(a is b for a, b in zip(unet, children, strict=True))
    assert list(unet.state_dict()) == keys
    assert torch.equal(run_refiners(unet, case.inputs), bare)
    assert case.conditions[0] is controlnet.condition
    controlnet.inject()  # re-injecting keeps the condition
    assert not torch.equal(run_refiners(unet, case.inputs), bare)
    controlnet.eject()


def test_fp16_variant_folder(tmp_path: Path) -> None:
    model, unet_path, inputs = make_tiny_unet(tmp_path, TINY_SD15, batch=1, height=8, width=8)
    diffusers_controlnet = _controlnet(model, 3)
    diffusers_controlnet.to(torch.float16).save_pretrained(tmp_path / "cn", variant="fp16")
    diffusers_controlnet.to(torch.float32)
    assert not (tmp_path / "cn" / "diffusion_pytorch_model.safetensors").exists()
    condition = torch.rand(1, 3, 64, 64)
    unet = refiners_sd.load_unet(unet_path)
    controlnet = ControlNet.from_diffusers(unet, tmp_path / "cn").inject()
    assert controlnet.encoder.residuals[0].convolution.weight.dtype == torch.float32  # the UNet's dtype
    controlnet.set_condition(condition)
    with torch.no_grad():
        down, mid = diffusers_controlnet(
            inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"], condition, return_dict=False
        )
    expected = run_diffusers(model, inputs, down_block_additional_residuals=down, mid_block_additional_residual=mid)
    assert max_diff(run_refiners(unet, inputs), expected) < TOLERANCE
    assert max_diff(expected, run_diffusers(model, inputs)) > 1e-2  # the ControlNet does change the output


def test_diffusers_keys_single_file_round_trip(case: Case, tmp_path: Path) -> None:
    unet = case.unet()
    controlnet = ControlNet.from_diffusers(unet, case.folders[0])
    path = tmp_path / "cn.safetensors"
    save_file({key: value.contiguous() for key, value in controlnet.encoder.diffusers_state_dict().items()}, path)
    assert set(load_file(path)) == set(case.controlnets[0].state_dict())
    again = ControlNet.from_diffusers(unet, path, name="again").inject()  # architecture inferred from shapes
    again.set_condition(case.conditions[0])
    assert max_diff(run_refiners(unet, case.inputs), case.expected(*case.residuals(0))) < TOLERANCE
    again.eject()


def test_save_diffusers_folder_loads_in_diffusers(case: Case, tmp_path: Path) -> None:
    from diffusers import ControlNetModel

    unet = case.unet()
    folder = ControlNet.from_diffusers(unet, case.folders[0]).save_diffusers(tmp_path / "saved")
    reloaded = ControlNetModel.from_pretrained(folder)
    expected = case.controlnets[0].state_dict()
    assert set(reloaded.state_dict()) == set(expected)
    assert all(torch.equal(value, expected[key]) for key, value in reloaded.state_dict().items())


# ---- errors: clear messages, UNet untouched -----------------------------------------------------------------


def test_architecture_mismatch_is_refused(case: Case, tmp_path: Path) -> None:
    other_config = TINY_SD15_3BLOCKS if case.config is TINY_SD15 else TINY_SD15
    _, other_path, _ = make_tiny_unet(tmp_path, other_config, batch=1)
    other = refiners_sd.load_unet(other_path)
    keys = list(other.state_dict())
    with pytest.raises(AdapterError, match="does not fit this UNet"):
        load_controlnet(other, case.folders[0])
    original = to_original_layout(case.controlnets[0].state_dict(), case.config["layers_per_block"])
    with pytest.raises((AdapterError, WeightsError)):
        load_controlnet(other, original)
    assert list(other.state_dict()) == keys and type(other[0]) is ResetResiduals


def test_weight_errors_name_the_keys(case: Case, tmp_path: Path) -> None:
    unet = case.unet()
    state = dict(case.controlnets[0].state_dict())
    del state["controlnet_down_blocks.2.weight"]
    state["controlnet_down_blocks.99.weight"] = torch.zeros(1)
    save_file(state, tmp_path / "broken.safetensors")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text((case.folders[0] / "config.json").read_text())
    save_file(state, tmp_path / "broken" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(
        WeightsError, match=r"missing keys: controlnet_down_blocks\.2\.weight.*controlnet_down_blocks\.99"
    ):
        ControlNet.from_diffusers(unet, tmp_path / "broken")
    save_file({"foo.weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(WeightsError, match="not a ControlNet"):
        ControlNet.from_diffusers(unet, tmp_path / "other.safetensors")
    torch.save(state, tmp_path / "cn.bin")
    with pytest.raises(PickleRefusedError):
        ControlNet.from_diffusers(unet, tmp_path / "cn.bin")
    with pytest.raises(WeightsError, match="not found"):
        ControlNet.from_diffusers(unet, tmp_path / "missing")
    assert type(unet[0]) is ResetResiduals


def test_condition_errors_and_unique_names(case: Case) -> None:
    unet = case.unet()
    controlnet = ControlNet.from_diffusers(unet, case.folders[0], name="depth").inject()
    with pytest.raises(ContextError, match="set_condition"):
        run_refiners(unet, case.inputs)
    controlnet.set_condition(torch.rand(2, 3, 8 * HEIGHT, 4 * WIDTH))
    with pytest.raises(ValueError, match="8x the latent size"):
        run_refiners(unet, case.inputs)
    with pytest.raises(ValueError, match="channels"):
        controlnet.set_condition(torch.rand(2, 1, 8 * HEIGHT, 8 * WIDTH))
    twin = ControlNet.from_diffusers(unet, case.folders[1], name="depth")
    with pytest.raises(AdapterError, match="already injected"):
        twin.inject()
    controlnet.eject()
    assert type(unet[0]) is ResetResiduals


# ---- plugin and registry ------------------------------------------------------------------------------------


def test_plugin_declares_the_family_without_importing_torch() -> None:
    code = (
        "import sys, refiners_controlnet.plugin as p; f = p.refiners_adapter_families()[0]; "
        "print(f.name, f.loader, ','.join(f.formats), ','.join(f.base_models), 'torch' in sys.modules)"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split() == [
        "controlnet",
        "refiners_controlnet.loader:load_controlnet",
        "diffusers,lllyasviel",
        "sd15,sdxl",
        "False",
    ]


def test_registry_loads_a_catalog_controlnet(
    case: Case, hub_server: Any, hub_env: dict[str, str], tmp_path: Path
) -> None:
    import refiners_registry as registry

    data = (case.folders[0] / "diffusion_pytorch_model.safetensors").read_bytes()
    revision = hub_server.add_repo("test-org/tiny-controlnet", {"diffusion_pytorch_model.safetensors": data})
    entry = {
        "name": "test/controlnet-tiny",
        "family": "controlnet",
        "base_model": "sdxl" if "addition_embed_type" in case.config else "sd15",
        "description": "tiny ControlNet",
        "license": "mit",
        "tags": ["test"],
        "requires": "refiners-controlnet>=0.1",
        "source": {
            "repo_id": "test-org/tiny-controlnet",
            "revision": revision,
            "files": [
                {
                    "path": "diffusion_pytorch_model.safetensors",
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                }
            ],
        },
    }
    catalog = hub_fixtures.write_catalog(tmp_path / "catalog.toml", [entry])
    hub = registry.Registry(endpoint=hub_server.url, catalogs=[catalog])
    unet = case.unet()
    controlnet = registry.load_adapter(
        unet, "test/controlnet-tiny", registry=hub, scale=0.5, condition=case.conditions[0]
    )
    assert isinstance(controlnet, ControlNet) and controlnet.is_injected
    assert max_diff(run_refiners(unet, case.inputs), case.expected(*case.residuals(0, scale=0.5))) < TOLERANCE
    controlnet.eject()


def test_pil_condition_equals_the_equivalent_tensor(case: Case) -> None:
    from PIL import Image

    unet = case.unet()
    controlnet = ControlNet.from_diffusers(unet, case.folders[0]).inject()
    pixels = (case.conditions[0][0] * 255).round().to(torch.uint8)  # one image, exactly representable in 8 bits
    image = Image.fromarray(pixels.permute(1, 2, 0).numpy(), mode="RGB")
    controlnet.set_image(image)
    from_pil = run_refiners(unet, case.inputs)
    controlnet.set_condition(pixels[None].float() / 255)  # [1, 3, H, W] in [0, 1]
    from_tensor = run_refiners(unet, case.inputs)
    assert torch.equal(from_pil, from_tensor)
    controlnet.remove()
    assert not any(isinstance(layer, ControlNet) for layer in unet.layers(ControlNet, recurse=True))
