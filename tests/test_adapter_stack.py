"""Every adapter family on one UNet: two LoRAs, a ControlNet, a T2I-Adapter and an IP-Adapter.

The stacked output is checked against diffusers running the same stack (peft LoRAs, ControlNet residuals,
T2I intrablock residuals, IP-Adapter image embeddings), then the adapters are ejected in a shuffled order
and the UNet must be bit for bit the bare one: same modules, same keys, same weights, same output.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import diffusers
import peft
import pytest
import refiners_controlnet
import refiners_ip_adapter
import refiners_lora
import refiners_sd
import refiners_t2i
import torch
from ip_adapter_fixtures import load_into_diffusers, make_h94, set_diffusers_scale
from safetensors.torch import save_file
from sd_fixtures import TINY_SD15, make_tiny_unet, run_refiners

TOLERANCE = 1e-4
BATCH, HEIGHT, WIDTH = 2, 16, 16
CONTROLNET_SCALE, T2I_SCALE, IP_SCALE = 0.8, 0.7, 0.6
IMAGE_DIM = 24


def snapshot(unet: Any) -> tuple[list[int], list[str], dict[str, torch.Tensor]]:
    """Identity of every module, state-dict keys and values."""
    state = unet.state_dict()
    return [id(m) for m in unet.modules()], list(state), {key: value.clone() for key, value in state.items()}


def perturbed(module: Any, seed: int) -> Any:
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return module.eval()


def add_peft_lora(model: Any, name: str, rank: int, targets: list[str], directory: Path, seed: int) -> Path:
    """Add a peft LoRA ``name`` to the diffusers ``model`` (random ``B``) and save it as a diffusers LoRA file."""
    model.add_adapter(peft.LoraConfig(r=rank, lora_alpha=rank, target_modules=targets), adapter_name=name)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, parameter in model.named_parameters():
            if f"lora_B.{name}." in key:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    state = peft.utils.get_peft_model_state_dict(model, adapter_name=name)
    path = directory / f"lora_{name}.safetensors"
    save_file({f"unet.{key}": value.contiguous() for key, value in state.items()}, path)
    return path


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`")
def test_lora_lora_controlnet_t2i_ip_adapter_match_diffusers_and_eject_in_any_order(tmp_path: Path) -> None:
    model, path, inputs = make_tiny_unet(tmp_path, TINY_SD15, batch=BATCH, height=HEIGHT, width=WIDTH)
    generator = torch.Generator().manual_seed(21)
    condition = torch.rand(BATCH, 3, HEIGHT * 8, WIDTH * 8, generator=generator)
    t2i_image = torch.rand(BATCH, 3, HEIGHT * 8, WIDTH * 8, generator=generator)
    image_embedding = torch.randn(BATCH, 5, IMAGE_DIM, generator=generator)  # Plus: penultimate states

    # the adapters' files, made with diffusers (before the LoRAs patch the reference model)
    controlnet = diffusers.ControlNetModel.from_unet(model, conditioning_embedding_out_channels=(8, 8, 16, 16))
    controlnet = perturbed(controlnet, seed=3)
    controlnet.save_pretrained(tmp_path / "controlnet")
    t2i = perturbed(diffusers.T2IAdapter(adapter_type="full_adapter", channels=[32, 64], num_res_blocks=1), seed=4)
    t2i.save_pretrained(tmp_path / "t2i")
    ip_state = make_h94(model, "plus", IMAGE_DIM, seed=5)
    lora_a = add_peft_lora(model, "a", 4, ["to_q", "to_k", "to_v", "to_out.0"], tmp_path, seed=6)
    lora_b = add_peft_lora(model, "b", 2, ["to_k", "conv1", "ff.net.2", "proj_in"], tmp_path, seed=7)

    # ours: interleave the families on purpose
    unet = refiners_sd.load_unet(path)
    before = snapshot(unet)
    bare = run_refiners(unet, inputs)
    loras = refiners_lora.LoraManager(unet)
    loras.add("a", lora_a)
    ip = refiners_ip_adapter.IPAdapter.from_file(unet, ip_state, scale=IP_SCALE).inject()
    ip.set_image_embedding(image_embedding)
    ours_controlnet = refiners_controlnet.load_controlnet(
        unet, tmp_path / "controlnet", name="control", scale=CONTROLNET_SCALE, condition=condition
    )
    ours_t2i = refiners_t2i.load_t2i_adapter(unet, tmp_path / "t2i", name="t2i", scale=T2I_SCALE, condition=t2i_image)
    loras.add("b", lora_b)
    ours = run_refiners(unet, inputs)

    # diffusers: the same stack on the reference model
    model.set_adapters(["a", "b"], [1.0, 1.0])
    load_into_diffusers(model, [ip_state])
    set_diffusers_scale(model, IP_SCALE)
    with torch.no_grad():
        down, mid = controlnet(
            inputs["sample"],
            inputs["timestep"],
            encoder_hidden_states=inputs["encoder_hidden_states"],
            controlnet_cond=condition,
            conditioning_scale=CONTROLNET_SCALE,
            return_dict=False,
        )
        features = [feature * T2I_SCALE for feature in t2i(t2i_image)]
        expected = model(
            inputs["sample"],
            inputs["timestep"],
            encoder_hidden_states=inputs["encoder_hidden_states"],
            added_cond_kwargs={"image_embeds": [image_embedding.unsqueeze(1)]},
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            down_intrablock_additional_residuals=features,
        ).sample
    assert (ours - expected).abs().max().item() < TOLERANCE
    assert (ours - bare).abs().max().item() > 1e-2

    diff = (ours - expected).abs().max().item()
    print(f"stack vs diffusers: max abs diff {diff:.2e}")

    # eject in shuffled orders: the bare UNet comes back bit for bit; re-stacking gives the same output again
    ejections = {
        "lora a": lambda: loras.remove("a"),
        "lora b": lambda: loras.remove("b"),
        "controlnet": ours_controlnet.eject,
        "t2i": ours_t2i.eject,
        "ip-adapter": ip.eject,
    }
    shuffler = random.Random(2024)
    for attempt in range(3):
        order = list(ejections)
        shuffler.shuffle(order)
        for name in order:
            ejections[name]()
        after = snapshot(unet)
        assert after[0] == before[0] and after[1] == before[1], order
        assert all(torch.equal(after[2][key], value) for key, value in before[2].items()), order
        assert torch.equal(run_refiners(unet, inputs), bare), order
        if attempt < 2:
            loras.add("a", lora_a)
            ip.inject()
            ours_t2i.inject()
            ours_controlnet.inject()
            loras.add("b", lora_b)
            assert torch.equal(run_refiners(unet, inputs), ours)
