"""refiners-sd UNets: parity with diffusers, weight I/O, name maps, structure contracts, plugin hook."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import refiners_sd
import torch
from refiners_sd import SD1UNet, SDXLUNet, UnsupportedConfigError
from refiners_sd.unet.blocks import CrossAttention
from refiners_sd.unet.layers import ResidualAccumulator
from safetensors.torch import load_file, save_file
from sd_fixtures import (
    TINY_SD15,
    TINY_SD15_3BLOCKS,
    TINY_SDXL,
    TINY_SDXL_3BLOCKS,
    make_tiny_unet,
    run_diffusers,
    run_refiners,
)

from refiners_core import Adapter, Chain, ConfigError, Linear, WeightsError
from refiners_core.module import Module

TOLERANCE = 1e-4


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


# ---- numerical parity with diffusers -----------------------------------------------------------------

PARITY_CASES = {
    # name: (config, batch, height, width, expected class)
    "sd15-2blocks-square": (TINY_SD15, 2, 16, 16, SD1UNet),
    "sd15-3blocks-nonsquare-odd": (TINY_SD15_3BLOCKS, 2, 14, 22, SD1UNet),
    "sdxl-2blocks-nonsquare": (TINY_SDXL, 2, 16, 24, SDXLUNet),
    "sdxl-3blocks-odd-batch3": (TINY_SDXL_3BLOCKS, 3, 14, 22, SDXLUNet),
}


@pytest.mark.parametrize("name", list(PARITY_CASES))
def test_parity_with_diffusers(tmp_path: Path, name: str) -> None:
    config, batch, height, width, unet_class = PARITY_CASES[name]
    model, path, inputs = make_tiny_unet(tmp_path, config, batch=batch, height=height, width=width)
    unet = unet_class.from_diffusers(path)
    assert type(refiners_sd.load_unet(path)) is unet_class
    expected = run_diffusers(model, inputs)
    actual = run_refiners(unet, inputs)
    assert max_diff(actual, expected) < TOLERANCE
    assert len(unet.use_context("unet")["residuals"]) == unet.num_residuals


def test_scalar_timestep(tmp_path: Path) -> None:
    model, path, inputs = make_tiny_unet(tmp_path, TINY_SD15, batch=2)
    inputs["timestep"] = torch.tensor(321)
    unet = SD1UNet.from_diffusers(path)
    assert max_diff(run_refiners(unet, inputs), run_diffusers(model, inputs)) < TOLERANCE
    unet.set_timestep(321)  # a plain number works too
    assert max_diff(unet(inputs["sample"]), run_diffusers(model, inputs)) < TOLERANCE


# ---- structure contracts used by adapter plugins -----------------------------------------------------


class AddControlResiduals(Module):
    """Test stand-in for a ControlNet: adds one tensor per entry of ``unet.residuals``."""

    def __init__(self, residuals: list[torch.Tensor]) -> None:
        super().__init__()
        self.residuals = residuals

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from refiners_core.context import provider_of

        stored = provider_of(self).get_context("unet")["residuals"]
        for index, residual in enumerate(self.residuals):
            stored[index] = stored[index] + residual
        return x


class AddFeature(Module):
    """Test stand-in for a T2I-Adapter feature: ``x + feature``."""

    def __init__(self, feature: torch.Tensor) -> None:
        super().__init__()
        self.feature = feature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.feature


def skip_shapes(unet: Any, inputs: dict[str, torch.Tensor]) -> list[torch.Size]:
    """Shapes of every ``unet.residuals`` entry after a forward (the middle entry is only read: it stays
    ``0.0`` without a ControlNet, and has the shape of the last skip)."""
    run_refiners(unet, inputs)
    residuals = unet.use_context("unet")["residuals"]
    assert residuals[-1] == 0.0
    return [residual.shape for residual in residuals[:-1]] + [residuals[-2].shape]


@pytest.mark.parametrize("config", [TINY_SD15, TINY_SDXL], ids=["sd15", "sdxl"])
def test_controlnet_style_residuals_match_diffusers(tmp_path: Path, config: dict[str, Any]) -> None:
    model, path, inputs = make_tiny_unet(tmp_path, config, batch=2, height=16, width=24)
    unet = refiners_sd.load_unet(path)
    generator = torch.Generator().manual_seed(3)
    control = [torch.randn(shape, generator=generator) for shape in skip_shapes(unet, inputs)]
    unet.insert(1, AddControlResiduals(control))  # right after ResetResiduals
    expected = run_diffusers(
        model, inputs, down_block_additional_residuals=tuple(control[:-1]), mid_block_additional_residual=control[-1]
    )
    assert max_diff(run_refiners(unet, inputs), expected) < TOLERANCE


@pytest.mark.parametrize("config", [TINY_SD15_3BLOCKS, TINY_SDXL], ids=["sd15", "sdxl"])
def test_t2i_style_features_at_down_block_ends_match_diffusers(tmp_path: Path, config: dict[str, Any]) -> None:
    model, path, inputs = make_tiny_unet(tmp_path, config, batch=2, height=16, width=24)
    unet = refiners_sd.load_unet(path)
    ends = [unet.down_block_end(block) for block in range(len(config["block_out_channels"]))]
    shapes: list[torch.Size] = []
    hooks = [end.ensure_find(ResidualAccumulator).register_forward_hook(
        lambda _m, args, _o: shapes.append(args[0].shape)) for end in ends]  # fmt: skip
    run_refiners(unet, inputs)
    for hook in hooks:
        hook.remove()
    generator = torch.Generator().manual_seed(4)
    features = [torch.randn(shape, generator=generator) for shape in shapes]
    for end, feature in zip(ends, features, strict=True):
        end.insert_before_type(ResidualAccumulator, AddFeature(feature))
    expected = run_diffusers(model, inputs, down_intrablock_additional_residuals=[f.clone() for f in features])
    assert max_diff(run_refiners(unet, inputs), expected) < TOLERANCE


def test_residual_counts_and_down_block_ends() -> None:
    sd15, sdxl = SD1UNet(device="meta"), SDXLUNet(device="meta")
    assert (sd15.num_residuals, sdxl.num_residuals) == (13, 10)
    assert [acc.n for acc in sd15.layers(ResidualAccumulator)] == list(range(12))
    # SD1.5: blocks 0-2 end at their last DownLayer (before the downsampler), block 3 at its last resnet
    assert [type(sd15.down_block_end(i)).__name__ for i in range(4)] == ["DownLayer"] * 4
    assert [sd15.down_block_end(i).ensure_find(ResidualAccumulator).n for i in range(4)] == [2, 5, 8, 11]
    # SDXL: block 0 has no attention, so its end is after its downsampler (as diffusers applies it)
    assert [type(sdxl.down_block_end(i)).__name__ for i in range(3)] == ["DownsampleLayer", "DownLayer", "DownLayer"]
    assert len(sd15.cross_attentions()) == 16 and len(sdxl.cross_attentions()) == 70


def test_cross_attention_layers_are_wrappable() -> None:
    unet = SD1UNet(TINY_SD15)
    attention = unet.cross_attentions()[0]
    names = attention.children_names
    assert names == ["Distribute", "ScaledDotProductAttention", "Linear"]
    assert all(isinstance(layer, Linear) for layer in attention["Distribute"])
    assert attention["Distribute"]["Linear_2"].in_features == TINY_SD15["cross_attention_dim"]


# ---- name maps -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("topology", ["sd15", "sdxl"])
def test_module_map_matches_diffusers_state_dict(topology: str) -> None:
    from diffusers import UNet2DConditionModel

    config = refiners_sd.KNOWN_CONFIGS[topology]
    unet = {"sd15": SD1UNet, "sdxl": SDXLUNet}[topology](device="meta")
    with torch.device("meta"):
        reference = UNet2DConditionModel.from_config(config)
    ours = {key: tensor.shape for key, tensor in refiners_sd.diffusers_state_dict(unet).items()}
    assert ours == {key: tensor.shape for key, tensor in reference.state_dict().items()}
    mapping = refiners_sd.diffusers_module_map(unet)
    covered = [id(p) for module in mapping.values() for p in module.parameters(recurse=False)]
    assert sorted(covered) == sorted(id(p) for p in unet.parameters())  # every parameter exactly once
    containers = refiners_sd.diffusers_module_map(unet, leaves_only=False)
    assert isinstance(containers["down_blocks.1.attentions.0.transformer_blocks.0.attn2"], CrossAttention)


@pytest.mark.parametrize("config", [TINY_SD15_3BLOCKS, TINY_SDXL_3BLOCKS], ids=["sd15", "sdxl"])
def test_attention_processor_order_matches_diffusers(config: dict[str, Any]) -> None:
    from diffusers import UNet2DConditionModel

    expected = [name.removesuffix(".processor") for name in UNet2DConditionModel(**config).attn_processors]
    unet = (SDXLUNet if config.get("addition_embed_type") else SD1UNet)(config)
    assert refiners_sd.attention_processor_names(unet) == expected


def test_module_map_looks_through_adapters() -> None:
    class Wrap(Chain, Adapter[Any]):
        def __init__(self, target: Any) -> None:
            with self.setup_adapter(target):
                super().__init__(target)

    unet = SD1UNet(TINY_SD15)
    before = refiners_sd.diffusers_module_map(unet, leaves_only=False)
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    Wrap(before[name]).inject()
    Wrap(before[f"{name}.to_k"]).inject()
    assert refiners_sd.diffusers_module_map(unet, leaves_only=False) == before


BLOCK0 = "transformer_blocks.0"
BLOCK9 = "transformer_blocks.9.attn2"


@pytest.mark.parametrize(
    ("ldm", "diffusers", "topology"),
    [
        ("input_blocks.0.0.weight", "conv_in.weight", "sd15"),
        ("input_blocks.1.0.in_layers.0", "down_blocks.0.resnets.0.norm1", "sd15"),
        ("input_blocks.4.0.skip_connection", "down_blocks.1.resnets.0.conv_shortcut", "sd15"),
        ("input_blocks.3.0.op", "down_blocks.0.downsamplers.0.conv", "sd15"),
        ("input_blocks.11.0.out_layers.3", "down_blocks.3.resnets.1.conv2", "sd15"),
        ("output_blocks.2.1.conv", "up_blocks.0.upsamplers.0.conv", "sd15"),
        ("output_blocks.5.2.conv", "up_blocks.1.upsamplers.0.conv", "sd15"),
        ("output_blocks.11.1.proj_out", "up_blocks.3.attentions.2.proj_out", "sd15"),
        ("middle_block.1." + BLOCK0 + ".ff.net.0.proj", "mid_block.attentions.0." + BLOCK0 + ".ff.net.0.proj", "sd15"),
        ("middle_block.2.emb_layers.1.bias", "mid_block.resnets.1.time_emb_proj.bias", "sd15"),
        ("time_embed.2", "time_embedding.linear_2", "sd15"),
        ("out.0", "conv_norm_out", "sd15"),
        ("input_blocks.4.1." + BLOCK0 + ".attn1.to_q", "down_blocks.1.attentions.0." + BLOCK0 + ".attn1.to_q", "sdxl"),
        ("input_blocks.8.1." + BLOCK9 + ".to_out.0", "down_blocks.2.attentions.1." + BLOCK9 + ".to_out.0", "sdxl"),
        ("input_blocks.6.0.op", "down_blocks.1.downsamplers.0.conv", "sdxl"),
        ("output_blocks.2.2.conv", "up_blocks.0.upsamplers.0.conv", "sdxl"),
        ("output_blocks.8.0.skip_connection", "up_blocks.2.resnets.2.conv_shortcut", "sdxl"),
        ("label_emb.0.0.weight", "add_embedding.linear_1.weight", "sdxl"),
    ],
)  # fmt: skip
def test_ldm_names(ldm: str, diffusers: str, topology: str) -> None:
    assert refiners_sd.ldm_to_diffusers_name(ldm, topology) == diffusers
    assert refiners_sd.diffusers_to_ldm_name(diffusers, topology) == ldm


@pytest.mark.parametrize("unet_class", [SD1UNet, SDXLUNet])
def test_ldm_map_round_trips_every_layer(unet_class: type) -> None:
    unet = unet_class(device="meta")
    ldm = refiners_sd.ldm_module_map(unet)
    assert len(ldm) == len(refiners_sd.diffusers_module_map(unet))
    for name in ldm:
        assert refiners_sd.diffusers_to_ldm_name(refiners_sd.ldm_to_diffusers_name(name, unet), unet) == name
    with pytest.raises(KeyError, match="input_blocks.99"):
        refiners_sd.ldm_to_diffusers_name("input_blocks.99.0.in_layers.0", unet)


# ---- weight files -------------------------------------------------------------------------------------


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path) -> None:
    _, path, _ = make_tiny_unet(tmp_path, TINY_SD15)
    state = load_file(path / "diffusion_pytorch_model.safetensors")
    del state["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"]
    state["down_blocks.0.attentions.0.extra.weight"] = torch.zeros(1)
    single = tmp_path / "broken.safetensors"
    save_file(state, single)
    with pytest.raises(WeightsError) as error:
        SD1UNet.from_diffusers(single, config=path / "config.json")
    message = str(error.value)
    assert "missing keys: down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight" in message
    assert "unexpected keys: down_blocks.0.attentions.0.extra.weight" in message


def test_unsupported_config_values_raise() -> None:
    with pytest.raises(UnsupportedConfigError, match="resnet_time_scale_shift='scale_shift'"):
        SD1UNet({**TINY_SD15, "resnet_time_scale_shift": "scale_shift"})
    with pytest.raises(UnsupportedConfigError, match="AttnUpBlock2D"):
        SD1UNet({**TINY_SD15, "up_block_types": ("UpBlock2D", "AttnUpBlock2D")})
    with pytest.raises(UnsupportedConfigError, match="num_class_embeds=10"):
        SD1UNet({**TINY_SD15, "num_class_embeds": 10})
    with pytest.raises(UnsupportedConfigError, match="SD1UNet needs a sd15 config"):
        SD1UNet(TINY_SDXL)


def test_fp16_variant(tmp_path: Path) -> None:
    model, path, inputs = make_tiny_unet(tmp_path, TINY_SD15, variant="fp16")
    assert not (path / "diffusion_pytorch_model.safetensors").exists()
    assert next(SD1UNet.from_diffusers(path).parameters()).dtype == torch.float16  # file dtype by default
    unet = refiners_sd.load_unet(path, dtype=torch.float32)
    assert max_diff(run_refiners(unet, inputs), run_diffusers(model, inputs)) < TOLERANCE


def test_single_file_with_config(tmp_path: Path) -> None:
    model, path, inputs = make_tiny_unet(tmp_path, TINY_SDXL)
    single = tmp_path / "single" / "unet.safetensors"
    single.parent.mkdir()
    shutil.copy(path / "diffusion_pytorch_model.safetensors", single)
    config = json.loads((path / "config.json").read_text())
    with pytest.raises(ConfigError, match="UNet config not found"):
        refiners_sd.load_unet(single)
    unet = refiners_sd.load_unet(single, config=config)
    assert isinstance(unet, SDXLUNet)
    assert max_diff(run_refiners(unet, inputs), run_diffusers(model, inputs)) < TOLERANCE
    shutil.copy(path / "config.json", single.parent / "config.json")  # next to the file: found by default
    assert isinstance(refiners_sd.load_unet(single), SDXLUNet)


def test_save_diffusers_round_trip(tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    model, path, inputs = make_tiny_unet(tmp_path, TINY_SD15_3BLOCKS, height=16, width=24)
    unet = SD1UNet.from_diffusers(path)
    out = unet.save_diffusers(tmp_path / "saved")
    reloaded = UNet2DConditionModel.from_pretrained(out).eval()
    expected = model.state_dict()
    actual = reloaded.state_dict()
    assert actual.keys() == expected.keys()
    assert all(torch.equal(actual[key], expected[key]) for key in expected)
    assert max_diff(run_refiners(SD1UNet.from_diffusers(out), inputs), run_diffusers(model, inputs)) < TOLERANCE


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(tmp_path: Path, dtype: torch.dtype) -> None:
    _, path, inputs = make_tiny_unet(tmp_path, TINY_SDXL)
    unet = refiners_sd.load_unet(path, dtype=dtype)
    expected = run_refiners(refiners_sd.load_unet(path), inputs)
    actual = run_refiners(unet, {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()})
    assert actual.dtype == dtype
    assert max_diff(actual.float(), expected) < 0.1 * expected.abs().max().item()


# ---- meta device ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("unet_class", "count"), [(SD1UNet, 859_520_964), (SDXLUNet, 2_567_463_684)])
def test_meta_build_of_real_configs(unet_class: type, count: int) -> None:
    unet = unet_class(device="meta", dtype=torch.float16)
    parameters = list(unet.parameters())
    assert sum(p.numel() for p in parameters) == count
    assert all(p.is_meta and p.dtype == torch.float16 for p in parameters)


# ---- plugin hook ------------------------------------------------------------------------------------------


def test_plugin_module_does_not_import_torch() -> None:
    code = "import sys, refiners_sd.plugin as p; p.refiners_base_models(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_base_model_families_registered(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from refiners_core.plugins import base_model_families, reset_plugin_manager

    monkeypatch.setenv("REFINERS_LOAD_PLUGINS", "refiners-sd")
    reset_plugin_manager()
    try:
        families = base_model_families()
    finally:
        reset_plugin_manager()
    assert {"sd15", "sdxl"} <= families.keys()
    from refiners_sd.base_model import load_base

    from refiners_core.plugins.descriptors import import_object

    sd15 = families["sd15"]
    assert sd15.load_loader() is load_base and families["sdxl"].load_loader() is load_base
    assert sd15.demo is not None and sd15.detect is not None and families["sdxl"].detect is not None
    folder = import_object(sd15.demo)(tmp_path, seed=0)  # the tiny SD1.5 pipeline folder
    assert import_object(sd15.detect)(folder) and not import_object(families["sdxl"].detect)(folder)
    pipeline = sd15.load_loader()(folder, device=None, dtype="float32", solver="euler")
    assert pipeline.architecture == "sd15" and pipeline.solver_name == "euler"
    assert set(pipeline.components()) == {"unet", "text_encoder", "vae"}
    assert pipeline.conventions("unet") == ("refiners", "diffusers", "ldm")
    assert pipeline.module_names("unet", "diffusers") == refiners_sd.diffusers_module_map(pipeline.unet)
