"""refiners-lora: hot-swapping a LoRA in a ``torch.compile``-d tiny UNet without recompiling (different
ranks padded to a maximum fixed up front, different target layers), and 8 stacked LoRAs computed as one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from refiners_lora import LoraError, LoraManager
from test_lora import assert_same, manual_output, snapshot, toy_lora, toy_model


def _kohya(modules: dict[str, Any], names: list[str], rank: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name in names:
        layer = modules[name]
        down_shape = (rank, *layer.weight.shape[1:])
        up_shape = (layer.weight.shape[0], rank, *([1, 1] if layer.weight.dim() == 4 else []))
        stem = f"lora_unet_{name.replace('.', '_')}"
        state[f"{stem}.lora_down.weight"] = 0.3 * torch.randn(down_shape, generator=generator)
        state[f"{stem}.lora_up.weight"] = 0.3 * torch.randn(up_shape, generator=generator)
        state[f"{stem}.alpha"] = torch.tensor(float(rank + 1))
    return state


def test_hotswap_in_a_compiled_unet_does_not_recompile(tmp_path: Path) -> None:
    import refiners_sd
    from sd_fixtures import TINY_SD15, make_tiny_unet, run_refiners
    from torch._dynamo.utils import counters

    tiny = make_tiny_unet(tmp_path, TINY_SD15, batch=1, height=8, width=8)
    unet = refiners_sd.load_unet(tiny.path)
    modules = refiners_sd.diffusers_module_map(unet)
    queries = sorted(name for name in modules if name.endswith("attn1.to_q"))
    convs = sorted(name for name in modules if name.endswith("resnets.0.conv1"))
    first = _kohya(modules, queries, rank=2, seed=0)
    second = _kohya(modules, queries[:1] + convs, rank=4, seed=1)  # other ranks, other layers
    before = snapshot(unet)

    manager = LoraManager(unet)
    manager.add_hotswappable("style", first, max_rank=4, targets=convs)
    torch._dynamo.reset()
    compiled = torch.compile(unet, backend="eager")

    def run_compiled() -> torch.Tensor:
        unet.set_timestep(tiny.inputs["timestep"])
        unet.set_clip_text_embedding(tiny.inputs["encoder_hidden_states"])
        with torch.no_grad():
            return compiled(tiny.inputs["sample"])

    run_compiled()  # the first call fills the UNet's contexts; the second one runs the settled graph
    out_first = run_compiled()
    torch.testing.assert_close(out_first, run_refiners(unet, tiny.inputs), atol=1e-5, rtol=0)
    graphs = counters["stats"]["unique_graphs"]
    counters["recompiles"].clear()
    with torch._dynamo.config.patch(error_on_recompile=True):
        manager.hotswap("style", second)
        out_second = run_compiled()
        manager.set_scale("style", 0.5)
        out_half = run_compiled()
    assert counters["stats"]["unique_graphs"] == graphs and not counters["recompiles"]
    with pytest.raises(LoraError, match="above the maximum rank 4"):
        manager.hotswap("style", _kohya(modules, queries, rank=8, seed=2))
    with pytest.raises(LoraError, match="not a hot-swap target"):
        manager.hotswap("style", _kohya(modules, sorted(n for n in modules if n.endswith("attn2.to_k")), 2, 3))
    manager.remove_all()
    assert_same(unet, before)

    # the same files loaded the ordinary way, eager: the reference
    reference = LoraManager(unet)
    reference.add("second", second)
    torch.testing.assert_close(out_second, run_refiners(unet, tiny.inputs), atol=1e-5, rtol=0)
    reference.set_scale("second", 0.5)
    torch.testing.assert_close(out_half, run_refiners(unet, tiny.inputs), atol=1e-5, rtol=0)
    reference.remove_all()
    assert (out_second - out_first).abs().max() > 1e-3


def test_eight_stacked_loras_are_one_concatenated_projection() -> None:
    model = toy_model()
    manager = LoraManager(model)
    loras = [(toy_lora(seed, rank=2 + seed % 3), 0.2 * (seed + 1)) for seed in range(8)]
    for index, (state, scale) in enumerate(loras):
        manager.add(f"l{index}", state, scale=scale)
    x = torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), manual_output(loras, x), atol=1e-4, rtol=1e-4)
        manager.set_scale("l3", 0.0)
        loras[3] = (loras[3][0], 0.0)
        torch.testing.assert_close(model(x), manual_output(loras, x), atol=1e-4, rtol=1e-4)
