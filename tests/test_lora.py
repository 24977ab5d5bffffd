"""refiners-lora: LoRA layers, LoraManager (stacking, scales, fusing, saving, errors) and parity with
diffusers + peft on tiny SD1.5 and SDXL UNets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from refiners_lora import Conv2dLora, LinearLora, LoraAdapter, LoraError, LoraManager, detect_format
from safetensors.torch import save_file
from torch import nn

import refiners_core as rc

# ---- helpers ---------------------------------------------------------------------------------------


def toy_model() -> rc.Chain:
    """A Chain with Linear and Conv2d leaves (strided, padded) to carry LoRAs."""
    torch.manual_seed(0)
    return rc.Chain(
        rc.Linear(8, 32),
        rc.Reshape(2, 4, 4),
        rc.Chain(rc.Conv2d(2, 6, 3, padding=1), rc.SiLU(), rc.Conv2d(6, 4, 3, stride=2, padding=1)),
        rc.Flatten(1),
        rc.Linear(16, 5),
    )


def toy_lora(seed: int, rank: int = 2, alpha: float | None = 3.0) -> dict[str, torch.Tensor]:
    """A kohya state dict for every layer of :func:`toy_model` (names use ``_`` for ``.``)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {
        "Linear_1": ((rank, 8), (32, rank)),
        "Chain_Conv2d_1": ((rank, 2, 3, 3), (6, rank, 1, 1)),
        "Chain_Conv2d_2": ((rank, 6, 3, 3), (4, rank, 1, 1)),
        "Linear_2": ((rank, 16), (5, rank)),
    }
    state: dict[str, torch.Tensor] = {}
    for name, (down, up) in shapes.items():
        state[f"lora_unet_{name}.lora_down.weight"] = 0.3 * torch.randn(*down, generator=generator)
        state[f"lora_unet_{name}.lora_up.weight"] = 0.3 * torch.randn(*up, generator=generator)
        if alpha is not None:
            state[f"lora_unet_{name}.alpha"] = torch.tensor(alpha)
    return state


def manual_output(loras: list[tuple[dict[str, torch.Tensor], float]], x: torch.Tensor) -> torch.Tensor:
    """The toy model's output with ``loras`` applied by hand: W + sum(scale * alpha / r * up @ down)."""
    patched = toy_model()
    for state, scale in loras:
        for key in [key for key in state if key.endswith(".lora_down.weight")]:
            prefix = key.removesuffix(".lora_down.weight")
            layer = patched.layer(prefix.removeprefix("lora_unet_").replace("_Conv2d", ".Conv2d"))
            down, up = state[key], state[f"{prefix}.lora_up.weight"]
            rank = down.shape[0]
            alpha = float(state[f"{prefix}.alpha"]) if f"{prefix}.alpha" in state else rank
            delta = (up.flatten(1) @ down.flatten(1)).view_as(layer.weight)
            with torch.no_grad():
                layer.weight += scale * alpha / rank * delta
    return patched(x)


def snapshot(model: nn.Module) -> tuple[str, list[tuple[str, int]], dict[str, torch.Tensor]]:
    """Structure, module identities and weights of ``model``, to check it is exactly unchanged."""
    modules = [(name, id(module)) for name, module in model.named_modules()]
    return repr(model), modules, {key: value.clone() for key, value in model.state_dict().items()}


def assert_same(model: nn.Module, before: tuple[str, list[tuple[str, int]], dict[str, torch.Tensor]]) -> None:
    after = snapshot(model)
    assert after[0] == before[0]
    assert after[1] == before[1]
    assert after[2].keys() == before[2].keys()
    for key, value in before[2].items():
        assert torch.equal(after[2][key], value), key


# ---- plugin ----------------------------------------------------------------------------------------


def test_plugin_declares_the_family_without_importing_torch() -> None:
    code = (
        "import sys, refiners_lora.plugin as p; f = p.refiners_adapter_families()[0]; "
        "print(f.name, f.loader, ','.join(f.formats), ','.join(f.base_models), 'torch' in sys.modules)"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split() == [
        "lora",
        "refiners_lora.loader:load_lora",
        "kohya,diffusers,peft,diffusers-old,refiners",
        "sd15,sdxl",
        "False",
    ]


def test_plugin_manager_finds_the_lora_family() -> None:
    from refiners_core.plugins.manager import get_plugin_manager  # type: ignore[attr-defined]

    families = [family for families in get_plugin_manager().hook.refiners_adapter_families() for family in families]
    lora = next(family for family in families if family.name == "lora")
    assert lora.load_loader().__name__ == "load_lora"


# ---- layers ----------------------------------------------------------------------------------------


def test_linear_lora_math() -> None:
    target = rc.Linear(8, 4)
    down, up = torch.randn(3, 8), torch.randn(4, 3)
    lora = LinearLora.from_weights(target, down, up, alpha=6.0, scale=0.5)
    x = torch.randn(2, 8)
    torch.testing.assert_close(lora(x), 0.5 * 6.0 / 3 * (x @ down.T @ up.T))
    assert lora.down.weight.dtype == target.weight.dtype and lora.down.weight.device == target.weight.device


def test_conv2d_lora_uses_base_kernel_stride_padding() -> None:
    target = rc.Conv2d(3, 5, 3, stride=2, padding=1, dilation=1)
    down, up = torch.randn(2, 3, 3, 3), torch.randn(5, 2, 1, 1)
    lora = Conv2dLora.from_weights(target, down, up, alpha=1.0)
    x = torch.randn(1, 3, 9, 9)
    expected = 0.5 * torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, down, stride=2, padding=1), up)
    torch.testing.assert_close(lora(x), expected)
    assert lora.down.stride == (2, 2) and lora.down.padding == (1, 1) and lora.up.kernel_size == (1, 1)


def test_lora_shapes_that_do_not_fit_raise() -> None:
    with pytest.raises(LoraError, match="do not fit Linear"):
        LinearLora.from_weights(rc.Linear(8, 4), torch.randn(3, 7), torch.randn(4, 3))
    with pytest.raises(LoraError, match="do not fit Conv2d"):
        Conv2dLora.from_weights(rc.Conv2d(3, 5, 3), torch.randn(2, 3, 1, 1), torch.randn(5, 2, 1, 1))


def test_lora_adapter_on_a_wrapped_torch_layer_ejects_exactly() -> None:
    torch_linear = nn.Linear(4, 4)
    model = rc.Chain(torch_linear, rc.SiLU())
    x = torch.randn(3, 4)
    base = model(x)
    adapter = LoraAdapter(torch_linear, first=LinearLora.for_target(torch_linear, rank=2)).inject()
    torch.testing.assert_close(model(x), base)  # fresh LoRA: up is zero
    adapter.eject()
    assert model.Linear is torch_linear and list(model.state_dict()) == ["Linear.weight", "Linear.bias"]


# ---- manager ---------------------------------------------------------------------------------------


def test_two_loras_stack_with_independent_scales_and_remove_one() -> None:
    model = toy_model()
    x = torch.randn(3, 8)
    base = model(x).detach()
    before = snapshot(model)
    first, second = toy_lora(1), toy_lora(2, rank=3, alpha=None)
    manager = LoraManager(model)
    manager.add("first", first, scale=0.7).add("second", second, scale=-0.4)
    assert manager.names == ["first", "second"] and manager.scales == {"first": 0.7, "second": -0.4}
    torch.testing.assert_close(model(x), manual_output([(first, 0.7), (second, -0.4)], x), atol=1e-5, rtol=1e-5)

    manager.set_scale("second", 1.5)
    torch.testing.assert_close(model(x), manual_output([(first, 0.7), (second, 1.5)], x), atol=1e-5, rtol=1e-5)

    manager.remove("first")
    assert manager.names == ["second"]
    torch.testing.assert_close(model(x), manual_output([(second, 1.5)], x), atol=1e-5, rtol=1e-5)
    manager.remove_all()
    assert_same(model, before)
    assert torch.equal(model(x), base)


def test_scale_zero_gives_the_base_output_exactly() -> None:
    model = toy_model()
    x = torch.randn(3, 8)
    base = model(x)
    manager = LoraManager(model)
    manager.add("a", toy_lora(1), scale=0.0)
    assert torch.equal(model(x), base)
    manager.set_scale("a", 1.0)
    assert not torch.equal(model(x), base)
    manager.set_scale("a", 0.0)
    manager.fuse()
    assert torch.equal(model(x), base)


def test_fuse_unfuse_round_trip_and_changes_while_fused() -> None:
    model = toy_model()
    x = torch.randn(3, 8)
    before = snapshot(model)
    manager = LoraManager(model)
    manager.add("a", toy_lora(1), scale=0.8).add("b", toy_lora(2), scale=0.3)
    unfused = model(x)
    manager.fuse()
    assert manager.fused_names == ["a", "b"]
    torch.testing.assert_close(model(x), unfused, atol=1e-5, rtol=1e-5)

    manager.set_scale("a", -0.5)  # supported while fused: the base weights move by the difference
    torch.testing.assert_close(model(x), manual_output([(toy_lora(1), -0.5), (toy_lora(2), 0.3)], x), atol=1e-5, rtol=0)
    manager.add("c", toy_lora(3), scale=0.2)  # a new LoRA while others are fused runs unfused
    manager.remove("b")  # removing a fused LoRA unfuses it first
    expected = manual_output([(toy_lora(1), -0.5), (toy_lora(3), 0.2)], x)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)

    manager.unfuse()
    assert manager.fused_names == []
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    manager.remove_all()
    structure, modules, weights = before
    after = snapshot(model)
    assert after[0] == structure and after[1] == modules
    for key, value in weights.items():
        torch.testing.assert_close(after[2][key], value, atol=1e-6, rtol=0)


def _toy_loha_lokr(seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A LoHa file (Tucker on the first convolution) and a LoKr file for every layer of :func:`toy_model`."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return 0.3 * torch.randn(*shape, generator=generator)

    loha: dict[str, torch.Tensor] = {}
    for name, (out, flat_in) in {"Linear_1": (32, 8), "Chain_Conv2d_2": (4, 54), "Linear_2": (5, 16)}.items():
        for index in "12":
            loha[f"lora_unet_{name}.hada_w{index}_a"] = rand(out, 2)
            loha[f"lora_unet_{name}.hada_w{index}_b"] = rand(2, flat_in)
    for index in "12":
        loha[f"lora_unet_Chain_Conv2d_1.hada_t{index}"] = rand(2, 2, 3, 3)
        loha[f"lora_unet_Chain_Conv2d_1.hada_w{index}_a"] = rand(2, 6)
        loha[f"lora_unet_Chain_Conv2d_1.hada_w{index}_b"] = rand(2, 2)
    loha |= {f"lora_unet_{name}.alpha": torch.tensor(1.0) for name in ("Linear_1", "Chain_Conv2d_1")}
    lokr = {
        "lora_unet_Linear_1.lokr_w1": rand(4, 2),
        "lora_unet_Linear_1.lokr_w2": rand(8, 4),
        "lora_unet_Chain_Conv2d_1.lokr_w1": rand(2, 1),
        "lora_unet_Chain_Conv2d_1.lokr_w2_a": rand(3, 2),
        "lora_unet_Chain_Conv2d_1.lokr_w2_b": rand(2, 18),
        "lora_unet_Chain_Conv2d_1.alpha": torch.tensor(3.0),
        "lora_unet_Chain_Conv2d_2.lokr_w1": rand(2, 2),
        "lora_unet_Chain_Conv2d_2.lokr_w2": rand(2, 3, 3, 3),
        "lora_unet_Linear_2.lokr_w1_a": rand(5, 2),
        "lora_unet_Linear_2.lokr_w1_b": rand(2, 4),
        "lora_unet_Linear_2.lokr_w2": rand(1, 4),
    }
    return loha, lokr


@pytest.mark.parametrize("block", [1 << 22, 7])
def test_loha_and_lokr_fused_in_row_blocks_come_back_out_one_at_a_time(
    block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # LoHa and LoKr are fused block by block (7 elements: several blocks per layer) and, when another
    # delta stays fused in the same layer, taken back out at the opposite scale
    import refiners_lora.deltas.base as base

    monkeypatch.setattr(base, "CHUNK_ELEMENTS", block)
    model = toy_model()
    x = torch.randn(3, 8)
    before = snapshot(model)
    manager = LoraManager(model)
    loha, lokr = _toy_loha_lokr(0)
    manager.add("loha", loha, scale=0.8).add("lokr", lokr, scale=0.6)
    assert manager.algorithms_of("loha") == ["loha"] and manager.algorithms_of("lokr") == ["lokr"]
    with torch.no_grad():
        unfused = model(x)
        manager.fuse()
        torch.testing.assert_close(model(x), unfused, atol=1e-5, rtol=1e-5)
        manager.set_scale("loha", -0.5)  # taken out at 0.8 and in again at -0.5, LoKr staying fused
        fused = model(x)
        manager.unfuse()
        torch.testing.assert_close(fused, model(x), atol=1e-5, rtol=1e-5)
        only_lokr = LoraManager(toy_model()).add("lokr", lokr, scale=0.6).model(x)
        manager.fuse()
        manager.remove("loha")  # out while LoKr stays fused
        torch.testing.assert_close(model(x), only_lokr, atol=1e-5, rtol=1e-5)
        # a bias change fused after LoKr: the original bias is kept from then on, and restored exactly
        manager.add(
            "full", {"lora_unet_Linear_1.diff": torch.randn(32, 8), "lora_unet_Linear_1.diff_b": torch.ones(32)}
        )
        manager.fuse()
    manager.remove_all()
    assert_same(model, before)


def test_fuse_only_selected_names() -> None:
    model = toy_model()
    x = torch.randn(3, 8)
    manager = LoraManager(model)
    manager.add("a", toy_lora(1)).add("b", toy_lora(2))
    out = model(x)
    manager.fuse(["b"])
    assert manager.fused_names == ["b"]
    torch.testing.assert_close(model(x), out, atol=1e-5, rtol=1e-5)
    with pytest.raises(LoraError, match="no LoRA named 'zzz'"):
        manager.fuse(["zzz"])


@pytest.mark.parametrize("layout", ["diffusers", "kohya", "refiners"])
def test_save_then_reload(tmp_path: Path, layout: str) -> None:
    model = toy_model()
    x = torch.randn(3, 8)
    manager = LoraManager(model)
    mixed = toy_lora(1)
    mixed["lora_unet_Linear_2.alpha"] = torch.tensor(7.0)  # a per-module alpha
    manager.add("a", mixed, scale=0.6)
    expected = model(x)
    path = manager.save("a", tmp_path / f"a_{layout}.safetensors", format=layout)
    manager.remove("a")
    manager.add("again", path, scale=0.6)
    torch.testing.assert_close(model(x), expected, atol=1e-6, rtol=0)
    from refiners_core.weights import read_metadata

    keys = list(__import__("safetensors.torch", fromlist=["load_file"]).load_file(path))
    assert detect_format(keys, read_metadata(path)) == layout
    if layout == "diffusers":
        config = json.loads(read_metadata(path)["lora_adapter_metadata"])
        assert config["unet.lora_alpha"] == 3 and config["unet.alpha_pattern"] == {"Linear_2": 7}


def test_errors_list_offending_keys_and_leave_the_model_unchanged() -> None:
    model = toy_model()
    manager = LoraManager(model)
    manager.add("kept", toy_lora(5), scale=0.5)
    x = torch.randn(3, 8)
    out = model(x)
    before = snapshot(model)

    unmatched = {**toy_lora(1), "lora_unet_Nope_Linear.lora_down.weight": torch.randn(2, 8)}
    unmatched["lora_unet_Nope_Linear.lora_up.weight"] = torch.randn(32, 2)
    with pytest.raises(LoraError, match=r"matching no module.*lora_unet_Nope_Linear\.lora_down\.weight"):
        manager.add("bad", unmatched)
    assert_same(model, before)

    misfit = toy_lora(1)
    misfit["lora_unet_Linear_2.lora_down.weight"] = torch.randn(2, 17)
    with pytest.raises(LoraError, match=r"do not fit.*lora_unet_Linear_2\.lora_down\.weight"):
        manager.add("bad", misfit)
    assert_same(model, before)

    text = {**toy_lora(1), "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.randn(2, 4)}
    text["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"] = torch.randn(4, 2)
    with pytest.raises(LoraError, match=r"text_encoder.*skip_components.*lora_te_text_model"):
        manager.add("bad", text)
    assert_same(model, before)

    incomplete = toy_lora(1)
    del incomplete["lora_unet_Linear_1.lora_up.weight"]
    with pytest.raises(LoraError, match=r"without their down/up pair.*lora_unet_Linear_1\.lora_down\.weight"):
        manager.add("bad", incomplete)
    assert_same(model, before)

    with pytest.raises(LoraError, match="already loaded"):
        manager.add("kept", toy_lora(1))
    with pytest.raises(LoraError, match="not a LoRA file"):
        manager.add("bad", {"foo.weight": torch.zeros(1)})
    assert_same(model, before)
    assert torch.equal(model(x), out)

    manager.add("text_skipped", text, skip_components=("text_encoder",))  # deliberate skip
    assert manager.names == ["kept", "text_skipped"]


def test_text_encoder_component_given_as_a_chain(tmp_path: Path) -> None:
    unet, text_encoder = toy_model(), rc.Chain(rc.Linear(4, 4))
    x = torch.randn(2, 4)
    down, up = torch.randn(2, 4), torch.randn(4, 2)
    state = {
        **toy_lora(1),
        "lora_te1_Linear.lora_down.weight": down,
        "lora_te1_Linear.lora_up.weight": up,
        "lora_te1_Linear.alpha": torch.tensor(1.0),
    }
    base = text_encoder(x)
    manager = LoraManager(unet, components={"text_encoder": text_encoder})
    manager.add("both", state)
    assert {component for component, _ in manager.layers_of("both")} == {"unet", "text_encoder"}
    torch.testing.assert_close(text_encoder(x), base + 0.5 * x @ down.T @ up.T)
    changed = text_encoder(x)
    for layout in ("kohya", "diffusers"):  # saved under the Chain's own names, read back the same
        path = manager.save("both", tmp_path / f"{layout}.safetensors", format=layout)
        manager.remove("both")
        manager.add("both", path)
        torch.testing.assert_close(text_encoder(x), changed)
    manager.remove_all()
    assert torch.equal(text_encoder(x), base)


def test_kohya_prefixes_follow_kohya_trainers() -> None:
    from refiners_lora.writers import kohya_prefixes

    clip_name = "encoder.layers.0.mlp.fc1"  # transformers >= 5 flattens CLIPTextModel: no `text_model.`
    one = kohya_prefixes([("unet", "down_blocks.0.attentions.0.proj_in"), ("text_encoder", clip_name)])
    assert one == {
        ("unet", "down_blocks.0.attentions.0.proj_in"): "lora_unet_down_blocks_0_attentions_0_proj_in",
        ("text_encoder", clip_name): "lora_te_text_model_encoder_layers_0_mlp_fc1",  # one text encoder: lora_te_
    }
    two = kohya_prefixes([("text_encoder", f"text_model.{clip_name}"), ("text_encoder_2", clip_name)])
    assert set(two.values()) == {
        "lora_te1_text_model_encoder_layers_0_mlp_fc1",
        "lora_te2_text_model_encoder_layers_0_mlp_fc1",
    }
    assert kohya_prefixes([("text_encoder", "Linear")]) == {("text_encoder", "Linear"): "lora_te_Linear"}


def test_fused_state_survives_failed_add() -> None:
    model = toy_model()
    manager = LoraManager(model)
    manager.add("a", toy_lora(1))
    manager.fuse()
    before = snapshot(model)
    with pytest.raises(LoraError):
        manager.add("b", {"lora_unet_missing.lora_down.weight": torch.randn(2, 2)})
    assert_same(model, before)


def test_formats_are_detected_from_keys() -> None:
    assert detect_format(["lora_unet_a_b.lora_down.weight"]) == "kohya"
    assert detect_format(["lora_te1_a.lora_up.weight"]) == "kohya"
    assert detect_format(["unet.a.b.lora_A.weight"]) == "diffusers"
    assert detect_format(["unet.a.attn1.processor.to_q_lora.down.weight"]) == "diffusers-old"
    assert detect_format(["unet.a.conv1.lora.down.weight"]) == "diffusers-old"
    assert detect_format(["unet.a.conv1.down.weight", "unet.a.conv1.alpha"]) == "refiners"


def test_old_diffusers_and_peft_layouts_load(tmp_path: Path) -> None:
    attention = rc.Chain(to_q=rc.Linear(4, 4), to_out=rc.Chain(rc.Linear(4, 4)))
    model = rc.Chain(attn=attention)
    generator = torch.Generator().manual_seed(0)
    down_q, down_o = torch.randn(2, 4, generator=generator), torch.randn(2, 4, generator=generator)
    up_q, up_o = torch.randn(4, 2, generator=generator), torch.randn(4, 2, generator=generator)
    old = {
        "unet.attn.processor.to_q_lora.down.weight": down_q,
        "unet.attn.processor.to_q_lora.up.weight": up_q,
        "unet.attn.to_out.0.lora.down.weight": down_o,
        "unet.attn.to_out.0.lora.up.weight": up_o,
    }
    peft = {
        "base_model.model.attn.to_q.lora_A.weight": down_q,
        "base_model.model.attn.to_q.lora_B.weight": up_q,
        "base_model.model.attn.to_out.0.lora_A.weight": down_o,
        "base_model.model.attn.to_out.0.lora_B.weight": up_o,
    }
    module_map = {"attn.to_q": attention.to_q, "attn.to_out.0": attention.to_out.Linear}
    x = torch.randn(2, 4)
    expected = attention.to_out(attention.to_q(x) + x @ down_q.T @ up_q.T)
    expected = expected + (attention.to_q(x) + x @ down_q.T @ up_q.T) @ down_o.T @ up_o.T
    for state in (old, peft):
        manager = LoraManager(model, module_map=module_map)
        manager.add("x", state)
        torch.testing.assert_close(model(x), expected)
        manager.remove_all()
    # adapter_config.json next to a PEFT file gives the alpha
    folder = tmp_path / "peft"
    folder.mkdir()
    save_file(peft, folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 8}))
    manager = LoraManager(model, module_map=module_map)
    manager.add("peft", folder)
    assert {lora.alpha for lora in manager.layers_of("peft").values()} == {8.0}


def test_loader_shares_one_manager_per_model(tmp_path: Path) -> None:
    from refiners_lora.loader import load_lora

    model = toy_model()
    path = tmp_path / "style.safetensors"
    save_file(toy_lora(1), path)
    first = load_lora(model, path, scale=0.5)
    again = load_lora(model, path)
    assert first.manager is again.manager and first.manager.names == ["style", "style_2"]
    assert isinstance(first, rc.LoadedAdapter) and first.scale == 0.5
    first.scale = 0.25
    assert first.manager.scales == {"style": 0.25, "style_2": 1.0}
    first.remove()
    assert again.manager.names == ["style_2"]


# ---- parity with diffusers + peft on tiny SD1.5 / SDXL UNets ----------------------------------------

LORA_TARGETS = [
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "time_emb_proj",
    "conv",
    "conv_in",
    "conv_out",
]
RANK, ALPHA = 4, 8


class DiffusersHost:
    """The smallest object diffusers' StableDiffusionXL LoRA loader mixin needs: a UNet, no text encoders."""

    def __init__(self, unet: Any) -> None:
        self.unet = unet
        self.text_encoder = None
        self.text_encoder_2 = None
        self.hf_device_map = None


class ParityCase:
    """A tiny diffusers UNet with a random peft LoRA, the LoRA written in several formats, and our UNet."""

    def __init__(self, directory: Path, config: dict[str, Any]) -> None:
        import refiners_sd
        from diffusers import StableDiffusionPipeline
        from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
        from peft import LoraConfig
        from peft.utils import get_peft_model_state_dict
        from sd_fixtures import make_tiny_unet, run_diffusers

        self.config = config
        self.directory = directory
        tiny = make_tiny_unet(directory, config, batch=1)
        self.inputs = tiny.inputs
        self.unet_path = tiny.path
        model = tiny.model
        self.base = run_diffusers(model, self.inputs)
        lora_config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=LORA_TARGETS, init_lora_weights=False)
        model.add_adapter(lora_config)
        generator = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if ".lora_A." in name or ".lora_B." in name:
                    parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
        self.expected = run_diffusers(model, self.inputs)  # peft applies lora_alpha / r
        peft_state = get_peft_model_state_dict(model)
        assert any(key.startswith("conv_in.") for key in peft_state)
        self.modules = sorted({key.split(".lora_")[0] for key in peft_state})

        files = directory / "files"
        host = StableDiffusionPipeline
        host.save_lora_weights(
            files / "meta",
            unet_lora_layers=peft_state,
            unet_lora_adapter_metadata=model.peft_config["default"].to_dict(),
        )
        self.with_metadata = files / "meta" / "pytorch_lora_weights.safetensors"
        host.save_lora_weights(files / "plain", unet_lora_layers=peft_state)
        self.without_metadata = files / "plain" / "pytorch_lora_weights.safetensors"
        # the same LoRA without metadata and alpha / r folded into B: what PEFT computes, read with alpha = r
        baked = {key: value * (ALPHA / RANK if ".lora_B." in key else 1.0) for key, value in peft_state.items()}
        host.save_lora_weights(files / "baked", unet_lora_layers=baked)
        self.baked = files / "baked" / "pytorch_lora_weights.safetensors"

        # kohya, by diffusers' own converter; it writes alpha = rank, so the true alpha is put back
        kohya = convert_state_dict_to_kohya({f"unet.{key}": value for key, value in peft_state.items()})
        kohya = {key: torch.tensor(float(ALPHA)) if key.endswith(".alpha") else value for key, value in kohya.items()}
        assert all(key.startswith("lora_unet_") for key in kohya)
        self.kohya = files / "kohya.safetensors"
        save_file(kohya, self.kohya)
        # kohya with LDM block names, as SDXL trainers write them
        ldm = {module: refiners_sd.diffusers_to_ldm_name(module, config) for module in self.modules}
        kohya_ldm = {}
        for key, value in kohya.items():
            stem, _, part = key.partition(".")
            module = next(m for m in self.modules if f"lora_unet_{m.replace('.', '_')}" == stem)
            kohya_ldm[f"lora_unet_{ldm[module].replace('.', '_')}.{part}"] = value
        self.kohya_ldm = files / "kohya_ldm.safetensors"
        save_file(kohya_ldm, self.kohya_ldm)

        self.unet = refiners_sd.load_unet(self.unet_path)

    def diffusers_output(self, path: Path, unet_config: bool = False) -> torch.Tensor:
        """Output of a fresh diffusers UNet with the LoRA file ``path`` loaded by diffusers itself."""
        from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
        from sd_fixtures import run_diffusers

        model = UNet2DConditionModel.from_pretrained(self.unet_path).eval()
        state, alphas, metadata = StableDiffusionXLPipeline.lora_state_dict(
            str(path), unet_config=model.config if unet_config else None, return_lora_metadata=True
        )
        StableDiffusionXLPipeline.load_lora_into_unet(state, alphas, model, metadata=metadata)
        return run_diffusers(model, self.inputs)

    def ours(self) -> torch.Tensor:
        from sd_fixtures import run_refiners

        return run_refiners(self.unet, self.inputs)


def _parity_case(tmp_path_factory: pytest.TempPathFactory, name: str) -> ParityCase:
    import diffusers  # noqa: F401
    import peft  # noqa: F401
    import refiners_sd  # noqa: F401
    from sd_fixtures import TINY_SD15, TINY_SDXL

    config = {"sd15": TINY_SD15, "sdxl": TINY_SDXL}[name]
    return ParityCase(tmp_path_factory.mktemp(name), config)


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def parity(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ParityCase:
    return _parity_case(tmp_path_factory, request.param)


ATOL = 1e-4


def test_parity_base_model(parity: ParityCase) -> None:
    torch.testing.assert_close(parity.ours(), parity.base, atol=ATOL, rtol=0)


@pytest.mark.parametrize("source", ["with_metadata", "baked", "kohya", "kohya_ldm"])
def test_parity_with_peft(parity: ParityCase, source: str) -> None:
    manager = LoraManager(parity.unet)
    try:
        manager.add("lora", getattr(parity, source))
        assert len(manager.layers_of("lora")) == len(parity.modules)
        torch.testing.assert_close(parity.ours(), parity.expected, atol=ATOL, rtol=0)
        manager.fuse()
        torch.testing.assert_close(parity.ours(), parity.expected, atol=ATOL, rtol=0)
        manager.unfuse()
    finally:
        manager.remove_all()
    torch.testing.assert_close(parity.ours(), parity.base, atol=ATOL, rtol=0)


def test_parity_kohya_ldm_file_is_read_the_same_by_diffusers(parity: ParityCase) -> None:
    # diffusers maps SD1.5 upsamplers of attention-free up blocks to attentions (and drops them with a
    # warning); kohya LDM names are an SDXL convention, so the file is checked against diffusers there.
    if parity.config.get("addition_embed_type") != "text_time":
        pytest.skip("diffusers' LDM remapping is only right for SDXL layouts")
    torch.testing.assert_close(
        parity.diffusers_output(parity.kohya_ldm, unet_config=True), parity.expected, atol=ATOL, rtol=0
    )


def test_parity_diffusers_file_without_metadata(parity: ParityCase) -> None:
    # no alpha anywhere in the file: both diffusers and we read alpha = rank
    expected = parity.diffusers_output(parity.without_metadata)
    manager = LoraManager(parity.unet)
    try:
        manager.add("plain", parity.without_metadata)
        assert {lora.alpha for lora in manager.layers_of("plain").values()} == {float(RANK)}
        torch.testing.assert_close(parity.ours(), expected, atol=ATOL, rtol=0)
    finally:
        manager.remove_all()


@pytest.mark.parametrize("layout", ["diffusers", "kohya"])
def test_parity_saved_files_load_in_diffusers(parity: ParityCase, layout: str, tmp_path: Path) -> None:
    manager = LoraManager(parity.unet)
    try:
        manager.add("lora", parity.kohya)
        path = manager.save("lora", tmp_path / f"saved_{layout}.safetensors", format=layout)
    finally:
        manager.remove_all()
    torch.testing.assert_close(parity.diffusers_output(path), parity.expected, atol=ATOL, rtol=0)


def test_parity_two_loras_scales_and_remove(parity: ParityCase) -> None:
    manager = LoraManager(parity.unet)
    try:
        manager.add("a", parity.kohya, scale=0.5)
        manager.add("b", parity.with_metadata, scale=0.25)
        both = parity.ours()
        delta = parity.expected - parity.base
        # LoRA is linear in the residual only per layer; check against a single LoRA at the summed scale
        manager.remove("b")
        manager.set_scale("a", 0.75)
        torch.testing.assert_close(both, parity.ours(), atol=ATOL, rtol=0)
        manager.set_scale("a", 0.0)
        assert torch.equal(parity.ours(), parity.base) or torch.allclose(parity.ours(), parity.base, atol=ATOL)
        assert delta.abs().max() > 1e-2  # the LoRA does change the output
    finally:
        manager.remove_all()


def test_parity_errors_leave_the_unet_unchanged(parity: ParityCase) -> None:
    from safetensors.torch import load_file

    unet = parity.unet
    before = snapshot(unet)
    manager = LoraManager(unet)
    kohya = load_file(parity.kohya)
    text = {**kohya, "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(4, 32)}
    text["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = torch.zeros(32, 4)
    with pytest.raises(LoraError, match="lora_te1_text_model_encoder_layers_0_self_attn_q_proj"):
        manager.add("x", text)
    assert_same(unet, before)
    unknown = {**kohya, "lora_unet_down_blocks_9_resnets_0_conv1.lora_down.weight": torch.zeros(4, 4, 3, 3)}
    unknown["lora_unet_down_blocks_9_resnets_0_conv1.lora_up.weight"] = torch.zeros(4, 4, 1, 1)
    with pytest.raises(LoraError, match="matching no module.*down_blocks_9"):
        manager.add("x", unknown)
    assert_same(unet, before)
    wrong = dict(kohya)
    key = next(key for key in wrong if "conv1.lora_down" in key)
    wrong[key] = torch.zeros(wrong[key].shape[0], wrong[key].shape[1], 1, 1)
    with pytest.raises(LoraError, match=f"do not fit.*{key}"):
        manager.add("x", wrong)
    assert_same(unet, before)
    manager.add("x", text, skip_components=["text_encoder"])
    manager.remove_all()
    assert_same(unet, before)


def test_registry_load_adapter_uses_the_lora_family(parity: ParityCase) -> None:
    import refiners_registry as registry

    handle = registry.load_adapter(parity.unet, parity.kohya, family="lora", scale=1.0)
    try:
        assert isinstance(handle.manager, LoraManager) and handle.manager.names == ["kohya"]
        torch.testing.assert_close(parity.ours(), parity.expected, atol=ATOL, rtol=0)
    finally:
        handle.remove()
