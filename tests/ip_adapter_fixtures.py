"""Random h94-layout IP-Adapter files for tiny diffusers UNets, and a diffusers reference run.

Usage::

    from ip_adapter_fixtures import make_h94, load_into_diffusers, run_diffusers_ip

    state = make_h94(model, "plus", image_dim=24)        # flat h94 keys, shapes fitting the diffusers UNet
    load_into_diffusers(model, [state])                  # diffusers' own h94 -> diffusers conversion
    expected = run_diffusers_ip(model, inputs, [embedding])
"""

from __future__ import annotations

from typing import Any

import torch

PLUS_HIDDEN = 32
PLUS_DEPTH = 4  # diffusers builds the Resampler with its default depth, 4
PLUS_HEADS = 1  # to_q width = heads * 64 in the published Resampler
PLUS_TOKENS = 16


def cross_attention_shapes(model: Any) -> list[tuple[int, int]]:
    """``(inner_dim, cross_attention_dim)`` of every ``attn2`` in diffusers' ``attn_processors`` order."""
    shapes = []
    for name in model.attn_processors:
        if name.endswith("attn2.processor"):
            attention = model.get_submodule(name.removesuffix(".processor"))
            shapes.append((attention.to_q.out_features, attention.to_k.in_features))
    return shapes


def make_h94(model: Any, variant: str, image_dim: int, seed: int = 0, tokens: int = 4) -> dict[str, torch.Tensor]:
    """A random flat h94 state dict for ``model`` (a diffusers UNet): ``base``, ``plus`` or ``full``."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int, std: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * std

    shapes = cross_attention_shapes(model)
    cross = shapes[0][1]
    state: dict[str, torch.Tensor] = {}
    if variant == "base":
        state["image_proj.proj.weight"] = rand(tokens * cross, image_dim)
        state["image_proj.proj.bias"] = rand(tokens * cross)
        state["image_proj.norm.weight"] = 1 + rand(cross)
        state["image_proj.norm.bias"] = rand(cross)
    elif variant == "full":
        state["image_proj.proj.0.weight"] = rand(image_dim, image_dim)
        state["image_proj.proj.0.bias"] = rand(image_dim)
        state["image_proj.proj.2.weight"] = rand(cross, image_dim)
        state["image_proj.proj.2.bias"] = rand(cross)
        state["image_proj.proj.3.weight"] = 1 + rand(cross)
        state["image_proj.proj.3.bias"] = rand(cross)
    elif variant == "plus":
        hidden, inner = PLUS_HIDDEN, PLUS_HEADS * 64
        state["image_proj.latents"] = rand(1, PLUS_TOKENS, hidden, std=1.0)
        state["image_proj.proj_in.weight"] = rand(hidden, image_dim)
        state["image_proj.proj_in.bias"] = rand(hidden)
        state["image_proj.proj_out.weight"] = rand(cross, hidden)
        state["image_proj.proj_out.bias"] = rand(cross)
        state["image_proj.norm_out.weight"] = 1 + rand(cross)
        state["image_proj.norm_out.bias"] = rand(cross)
        for i in range(PLUS_DEPTH):
            for norm in ("norm1", "norm2"):
                state[f"image_proj.layers.{i}.0.{norm}.weight"] = 1 + rand(hidden)
                state[f"image_proj.layers.{i}.0.{norm}.bias"] = rand(hidden)
            state[f"image_proj.layers.{i}.0.to_q.weight"] = rand(inner, hidden)
            state[f"image_proj.layers.{i}.0.to_kv.weight"] = rand(2 * inner, hidden)
            state[f"image_proj.layers.{i}.0.to_out.weight"] = rand(hidden, inner)
            state[f"image_proj.layers.{i}.1.0.weight"] = 1 + rand(hidden)
            state[f"image_proj.layers.{i}.1.0.bias"] = rand(hidden)
            state[f"image_proj.layers.{i}.1.1.weight"] = rand(4 * hidden, hidden)
            state[f"image_proj.layers.{i}.1.3.weight"] = rand(hidden, 4 * hidden)
    else:
        raise ValueError(variant)
    for index, (inner, cross_dim) in enumerate(shapes):
        state[f"ip_adapter.{2 * index + 1}.to_k_ip.weight"] = rand(inner, cross_dim, std=0.3)
        state[f"ip_adapter.{2 * index + 1}.to_v_ip.weight"] = rand(inner, cross_dim, std=0.3)
    return state


def nested(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The ``{"image_proj": {...}, "ip_adapter": {...}}`` form diffusers' loader takes."""
    result: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in state.items():
        group, _, rest = key.partition(".")
        result[group][rest] = value.clone()
    return result


def load_into_diffusers(model: Any, states: list[dict[str, torch.Tensor]]) -> None:
    """Load h94 state dicts with diffusers' own converter (``_load_ip_adapter_weights``)."""
    model._load_ip_adapter_weights([nested(state) for state in states], low_cpu_mem_usage=False)


def set_diffusers_scale(model: Any, scale: Any) -> None:
    """Apply ``scale`` the way diffusers pipelines' ``set_ip_adapter_scale`` does."""
    from types import SimpleNamespace

    from diffusers.loaders.ip_adapter import IPAdapterMixin

    IPAdapterMixin.set_ip_adapter_scale(SimpleNamespace(unet=model, unet_name="unet"), scale)  # type: ignore[arg-type]


@torch.no_grad()
def run_diffusers_ip(
    model: Any, inputs: dict[str, torch.Tensor], image_embeds: list[torch.Tensor], **kwargs: Any
) -> torch.Tensor:
    """Run the diffusers UNet with IP-Adapter image embeddings (one tensor per loaded IP-Adapter)."""
    added: dict[str, Any] = {key: inputs[key] for key in ("text_embeds", "time_ids") if key in inputs}
    added["image_embeds"] = image_embeds
    return model(
        inputs["sample"],
        inputs["timestep"],
        encoder_hidden_states=inputs["encoder_hidden_states"],
        added_cond_kwargs=added,
        **kwargs,
    ).sample
