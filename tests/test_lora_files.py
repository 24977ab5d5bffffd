"""refiners-lora: file metadata (kohya ``ss_*``, ``modelspec.*``), the wrong-architecture error,
``refiners lora inspect``, and bad input (NaN, non-scalar alpha, rank 0, broken JSON headers, a failed
first load) giving one clear error and leaving nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from refiners_lora import LoraError, LoraManager, load_lora
from safetensors.torch import save_file
from test_lora import assert_same, snapshot, toy_lora, toy_model

import refiners_core as rc

SDXL_HEADER = {
    "ss_base_model_version": "sdxl_base_v1-0",
    "ss_network_module": "lycoris.kohya",
    "ss_network_args": json.dumps({"algo": "loha"}),
    "ss_network_dim": "4",
    "ss_network_alpha": "2",
    "ss_tag_frequency": json.dumps({"10_data": {"shiny robot": 12, "red": 3}, "5_more": {"red": 4}}),
    "ss_output_name": "robot style",
}


class Sd15Model(rc.Chain):
    """A toy model that declares itself an SD1.5 UNet (as refiners-sd UNets do through ``topology``)."""

    topology = "sd15"


def sd15_toy() -> Sd15Model:
    return Sd15Model(*toy_model())


def test_metadata_reads_kohya_and_modelspec_headers() -> None:
    from refiners_lora.metadata import read_lora_metadata

    meta = read_lora_metadata(SDXL_HEADER)
    assert (meta.base_model, meta.algorithm, meta.rank, meta.alpha) == ("sdxl", "loha", "4", "2")
    assert meta.trigger_words[:2] == ["shiny robot", "red"] and meta.title == "robot style"
    spec = read_lora_metadata({"modelspec.architecture": "stable-diffusion-v1/lora", "modelspec.title": "x"})
    assert (spec.base_model, spec.title) == ("sd15", "x")
    assert read_lora_metadata({"ss_tag_frequency": "{not json"}).trigger_words == []


def test_wrong_architecture_is_one_error_naming_both_before_key_matching(tmp_path: Path) -> None:
    path = tmp_path / "xl.safetensors"
    # keys that match nothing: the architecture error must come first
    save_file({"lora_unet_nothing_here.lora_down.weight": torch.zeros(2, 8)}, path, metadata=SDXL_HEADER)
    model = sd15_toy()
    before = snapshot(model)
    with pytest.raises(LoraError, match=r"xl.safetensors was trained for sdxl .*ss_base_model_version.* model is sd15"):
        LoraManager(model).add("xl", path)
    assert_same(model, before)
    save_file(toy_lora(0), path, metadata={**SDXL_HEADER, "ss_base_model_version": "sd_v1"})
    manager = LoraManager(model)
    manager.add("ok", path)  # same architecture: loads
    manager.remove_all()
    manager = LoraManager(toy_model(), architecture="sdxl")
    with pytest.raises(LoraError, match="trained for sd15"):
        manager.add("ok", path)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "refiners_core.cli", *args], capture_output=True, text=True)


def test_inspect_prints_algorithms_rank_alpha_base_model_triggers_and_size(tmp_path: Path) -> None:
    state = toy_lora(0, rank=2, alpha=3.0)
    state["lora_te1_text_model_encoder_layers_0_mlp_fc1.hada_w1_a"] = torch.zeros(4, 2)
    state["lora_te1_text_model_encoder_layers_0_mlp_fc1.hada_w1_b"] = torch.zeros(2, 4)
    state["lora_te1_text_model_encoder_layers_0_mlp_fc1.hada_w2_a"] = torch.zeros(4, 2)
    state["lora_te1_text_model_encoder_layers_0_mlp_fc1.hada_w2_b"] = torch.zeros(2, 4)
    path = tmp_path / "mixed.safetensors"
    save_file(state, path, metadata=SDXL_HEADER)
    completed = _cli("lora", "inspect", str(path), "--json")
    assert completed.returncode == 0, completed.stderr
    summary = json.loads(completed.stdout)
    assert summary["algorithms"] == ["loha", "lora"] and summary["ranks"] == [2]
    assert summary["alphas"] == [3.0] and summary["base_model"] == "sdxl"
    assert summary["components"] == {"unet": 4, "text_encoder": 1}
    assert summary["trigger_words"][0] == "shiny robot" and summary["size_bytes"] == path.stat().st_size
    text = _cli("lora", "inspect", str(path))
    assert "algorithms:    loha, lora" in text.stdout and "sdxl" in text.stdout
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    failed = _cli("lora", "inspect", str(bad))
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert [line for line in failed.stderr.splitlines() if line.strip()][0].startswith("Error:")
    assert len([line for line in failed.stderr.splitlines() if line.strip()]) == 1


def test_nan_or_inf_in_weights_or_scales_is_an_error_naming_the_cause(tmp_path: Path) -> None:
    model = toy_model()
    before = snapshot(model)
    manager = LoraManager(model)
    with pytest.raises(LoraError, match="scale of LoRA 'a' is nan"):
        manager.add("a", toy_lora(0), scale=float("nan"))
    state = toy_lora(0)
    state["lora_unet_Linear_1.lora_up.weight"][0, 0] = float("inf")
    with pytest.raises(LoraError, match=r"lora_unet_Linear_1.lora_up.weight.*NaN or infinite"):
        manager.add("a", state)
    path = tmp_path / "nan.safetensors"
    save_file(state, path)
    with pytest.raises(LoraError, match=r"nan.safetensors holds NaN or infinite values in lora_unet_Linear_1"):
        manager.add("a", path)
    alpha = toy_lora(0)
    alpha["lora_unet_Linear_1.alpha"] = torch.tensor(float("nan"))
    with pytest.raises(LoraError, match="lora_unet_Linear_1.alpha is nan"):
        manager.add("a", alpha)
    manager.add("a", toy_lora(0))
    with pytest.raises(LoraError, match="scale of LoRA 'a' is inf"):
        manager.set_scale("a", float("inf"))
    manager.remove_all()
    assert_same(model, before)


def test_hotswap_of_nan_weights_is_refused_and_keeps_the_loaded_lora(tmp_path: Path) -> None:
    model = toy_model()
    manager = LoraManager(model)
    threads = torch.get_num_threads()
    manager.add_hotswappable("hot", toy_lora(0), max_rank=4)
    x = torch.randn(3, 8)
    with torch.no_grad():
        expected = model(x)
    bad = toy_lora(1, rank=3)
    bad["lora_unet_Chain_Conv2d_2.lora_down.weight"][1, 0, 0, 0] = float("nan")
    with pytest.raises(LoraError, match=r"NaN or infinite.*lora_unet_Chain_Conv2d_2.lora_down.weight"):
        manager.hotswap("hot", bad)
    save_file(bad, tmp_path / "bad.safetensors")
    with pytest.raises(LoraError, match=r"bad.safetensors holds NaN or infinite values in lora_unet_Chain_Conv2d_2"):
        manager.hotswap("hot", tmp_path / "bad.safetensors")
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    assert torch.get_num_threads() == threads  # hot-swap runs single-threaded, then restores the count


def test_nonfinite_keys_names_bad_tensors_only() -> None:
    from refiners_lora.deltas.base import nonfinite_keys

    huge = torch.full((4,), 3e38)  # finite values whose float32 sum overflows
    half = torch.ones(3, dtype=torch.float16)
    half[1] = float("-inf")
    nan = torch.zeros(2, 2)
    nan[1, 1] = float("nan")
    tensors = {"huge": huge, "half": half, "nan": nan, "ints": torch.arange(3), "empty": torch.zeros(0)}
    assert nonfinite_keys(tensors) == ["half", "nan"]
    assert nonfinite_keys({"ok": torch.randn(5, dtype=torch.bfloat16)}) == []


def test_non_scalar_alpha_and_rank_zero_are_clear_errors() -> None:
    model = toy_model()
    before = snapshot(model)
    state = toy_lora(0)
    state["lora_unet_Linear_1.alpha"] = torch.ones(3)
    with pytest.raises(LoraError, match=r"lora_unet_Linear_1.alpha must be a scalar, got a tensor of shape \(3,\)"):
        LoraManager(model).add("a", state)
    zero = toy_lora(0)
    zero["lora_unet_Linear_1.lora_down.weight"] = torch.zeros(0, 8)
    zero["lora_unet_Linear_1.lora_up.weight"] = torch.zeros(32, 0)
    with pytest.raises(LoraError, match="lora_unet_Linear_1.lora_down.weight.*rank must be positive"):
        LoraManager(model).add("a", zero)
    assert_same(model, before)


SHAPE_ERRORS = {
    # Linear_1 is Linear(8, 32), Chain_Conv2d_1 is Conv2d(2, 6, 3)
    "loha inner sizes": (
        {"hada_w1_a": (32, 2), "hada_w1_b": (3, 8), "hada_w2_a": (32, 2), "hada_w2_b": (2, 8)},
        r"Linear_1.hada_w1_a.*LoHa hada_w1_a, hada_w1_b: shapes \(32, 2\) and \(3, 8\) cannot be multiplied",
    ),
    "loha products differ": (
        {"hada_w1_a": (32, 2), "hada_w1_b": (2, 8), "hada_w2_a": (32, 2), "hada_w2_b": (2, 4)},
        r"Linear_1.hada_w1_a.*LoHa products of shapes \(32, 8\) \(hada_w1\) and \(32, 4\) \(hada_w2\) differ",
    ),
    "loha misfit": (
        {"hada_w1_a": (16, 2), "hada_w1_b": (2, 8), "hada_w2_a": (16, 2), "hada_w2_b": (2, 8)},
        r"Linear_1.hada_w1_a.*LoHa delta of shape \(16, 8\) does not fit a weight of shape \(32, 8\)",
    ),
    "lokr misfit": (
        {"lokr_w1": (4, 2), "lokr_w2": (8, 3)},
        r"Linear_1.lokr_w1.*LoKr delta of shape \(32, 6\) does not fit a weight of shape \(32, 8\)",
    ),
    "lokr inner sizes": (
        {"lokr_w1": (4, 2), "lokr_w2_a": (8, 2), "lokr_w2_b": (3, 4)},
        r"Linear_1.lokr_w1.*LoKr lokr_w2_a, lokr_w2_b: shapes \(8, 2\) and \(3, 4\) cannot be multiplied",
    ),
    "glora inputs": (
        {"a1.weight": (4, 2), "a2.weight": (2, 4), "b1.weight": (32, 2), "b2.weight": (2, 8)},
        r"Linear_1.a1.weight.*GLoRA a1.weight @ a2.weight of shape \(4, 4\) does not fit the 8 inputs",
    ),
}


@pytest.mark.parametrize("kind", list(SHAPE_ERRORS))
def test_lycoris_shapes_that_do_not_fit_name_their_keys(kind: str) -> None:
    model = toy_model()
    before = snapshot(model)
    shapes, message = SHAPE_ERRORS[kind]
    state = {f"lora_unet_Linear_1.{suffix}": torch.randn(shape) for suffix, shape in shapes.items()}
    with pytest.raises(LoraError, match=message):
        LoraManager(model).add("a", state)
    assert_same(model, before)


def test_glora_tucker_core_that_does_not_fit_names_its_keys() -> None:
    model = toy_model()
    stem = "lora_unet_Chain_Conv2d_1"
    state = {
        f"{stem}.a1.weight": torch.randn(2, 4, 1, 1),
        f"{stem}.a2.weight": torch.randn(4, 2, 1, 1),
        f"{stem}.b1.weight": torch.randn(6, 4, 1, 1),
        f"{stem}.b2.weight": torch.randn(4, 2, 1, 1),
        f"{stem}.bm.weight": torch.randn(4, 3, 3, 3),
    }
    with pytest.raises(LoraError, match=rf"{stem}.bm.weight.*core, up and down of shapes \(4, 3, 3, 3\)"):
        LoraManager(model).add("a", state)
    manager = LoraManager(model).add("a", {**state, f"{stem}.bm.weight": torch.randn(4, 4, 3, 3)})
    assert manager.algorithms_of("a") == ["glora"]


def _peft_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "peft"
    folder.mkdir()
    down, up = torch.randn(2, 8), torch.randn(32, 2)
    save_file({"base_model.model.Linear_1.lora_A.weight": down, "base_model.model.Linear_1.lora_B.weight": up},
              folder / "adapter_model.safetensors")  # fmt: skip
    return folder


def test_broken_peft_config_and_diffusers_header_name_the_file(tmp_path: Path) -> None:
    folder = _peft_folder(tmp_path)
    (folder / "adapter_config.json").write_text('{"r": 2, "lora_alpha": ')
    model = toy_model()
    with pytest.raises(LoraError, match=r"adapter_config.json is not valid JSON"):
        LoraManager(model).add("a", folder)
    (folder / "adapter_config.json").write_text("[1, 2]")
    with pytest.raises(LoraError, match=r"adapter_config.json is not a JSON object"):
        LoraManager(model).add("a", folder)
    path = tmp_path / "header.safetensors"
    save_file({"unet.Linear_1.lora_A.weight": torch.randn(2, 8), "unet.Linear_1.lora_B.weight": torch.randn(32, 2)},
              path, metadata={"lora_adapter_metadata": "{'r': 2"})  # fmt: skip
    with pytest.raises(LoraError, match=r"lora_adapter_metadata header of .*header.safetensors is not valid JSON"):
        LoraManager(model).add("a", path)


def test_a_failed_first_load_leaves_no_manager_behind(tmp_path: Path) -> None:
    model = toy_model()
    text = toy_lora(0)
    text["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.zeros(2, 4)
    text["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"] = torch.zeros(4, 2)
    with pytest.raises(LoraError, match="text_encoder"):
        load_lora(model, text, name="a")
    assert "_refiners_lora_manager" not in model.__dict__
    # the retry with the component given is honoured (not a stale manager without it)
    encoder = rc.Chain(rc.Linear(4, 4))
    names = {"text_model.encoder.layers.0.mlp.fc1": encoder.Linear}
    manager = load_lora(model, text, name="a", components={"text_encoder": names}).manager
    assert sorted(component for component, _ in manager.layers_of("a")) == ["text_encoder"] + ["unet"] * 4
    manager.remove_all()
    assert "_refiners_lora_manager" not in model.__dict__
