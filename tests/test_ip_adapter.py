"""refiners-ip-adapter: parity with diffusers' IP-Adapter on tiny SD1.5/SDXL UNets, scales, eject, errors, plugin."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import refiners_sd
import torch
from ip_adapter_fixtures import load_into_diffusers, make_h94, run_diffusers_ip, set_diffusers_scale
from refiners_ip_adapter import (
    CLIPImageConfig,
    CLIPImageEncoder,
    DecoupledCrossAttention,
    ImageCrossAttention,
    IPAdapter,
    parse_h94,
)
from sd_fixtures import TINY_SD15, TINY_SDXL, make_tiny_unet, run_refiners

import refiners_core as rc
from refiners_core import AdapterError, PickleRefusedError, WeightsError, save_state_dict

TOLERANCE = 1e-4
IMAGE_DIM = 24  # width of the image features the tiny IP-Adapters read
BATCH = 2


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def embedding_for(variant: str, images: int = 1, seed: int = 5) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (BATCH, images, IMAGE_DIM) if variant == "base" else (BATCH, images, 5, IMAGE_DIM)
    return torch.randn(*shape, generator=generator)


def snapshot(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in unet.state_dict().items()}


def assert_same_state(unet: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = unet.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[key], value) for key, value in before.items())


class TinyUNets:
    """Tiny diffusers UNets saved once per module; tests get fresh diffusers copies from the folders."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self.factory = factory
        self.cases: dict[str, tuple[Any, Path, dict[str, torch.Tensor]]] = {}

    def __call__(self, topology: str) -> tuple[Any, Path, dict[str, torch.Tensor]]:
        if topology not in self.cases:
            config = {"sd15": TINY_SD15, "sdxl": TINY_SDXL}[topology]
            self.cases[topology] = tuple(make_tiny_unet(self.factory.mktemp(topology), config, batch=BATCH))  # type: ignore[assignment]
        return self.cases[topology]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyUNets:
    return TinyUNets(tmp_path_factory)


def fresh_diffusers(path: Path) -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(path).eval()


# ---- parity with diffusers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topology", "variant", "images", "scale"),
    [
        ("sd15", "base", 1, 1.0),
        ("sd15", "plus", 2, 0.8),
        ("sd15", "full", 1, 0.7),
        ("sdxl", "base", 2, 0.6),
        ("sdxl", "plus", 1, 1.0),
    ],
    ids=["sd15-base", "sd15-plus-2images-scale", "sd15-full-scale", "sdxl-base-2images-scale", "sdxl-plus"],
)
def test_matches_diffusers(
    tiny: TinyUNets, tmp_path: Path, topology: str, variant: str, images: int, scale: float
) -> None:
    _, path, inputs = tiny(topology)
    model = fresh_diffusers(path)
    state = make_h94(model, variant, IMAGE_DIM)
    file = save_state_dict(state, tmp_path / f"ip-adapter-{variant}.safetensors")
    embedding = embedding_for(variant, images)
    unet = refiners_sd.load_unet(path)
    bare = run_refiners(unet, inputs)
    ip = IPAdapter.from_file(unet, file, scale=scale)
    assert (ip.variant, ip.num_tokens) == (variant, {"base": 4, "plus": 16, "full": 257}[variant])
    ip.inject()
    ip.set_image_embedding(embedding if images > 1 else embedding[:, 0])  # [B, D] / [B, N, H] also accepted
    ours = run_refiners(unet, inputs)
    load_into_diffusers(model, [state])
    set_diffusers_scale(model, scale)
    expected = run_diffusers_ip(model, inputs, [embedding])
    assert max_diff(ours, expected) < TOLERANCE
    assert max_diff(bare, expected) > 1e-2  # the image prompt does change the output


def test_per_block_scales_match_diffusers(tiny: TinyUNets) -> None:
    _, path, inputs = tiny("sd15")
    model = fresh_diffusers(path)
    state = make_h94(model, "plus", IMAGE_DIM)
    embedding = embedding_for("plus")
    unet = refiners_sd.load_unet(path)
    ip = IPAdapter.from_file(unet, state).inject()
    ip.set_image_embedding(embedding)
    scale = {"down": {"block_0": [0.0, 1.0]}, "mid": 0.5, "up": {"block_1": [1.0, 0.0, 0.3]}}
    ip.set_scale(scale)
    assert list(ip.scales.values()) == [0.0, 1.0, 1.0, 0.0, 0.3, 0.5]  # processor order: down, up, mid
    load_into_diffusers(model, [state])
    set_diffusers_scale(model, scale)
    assert max_diff(run_refiners(unet, inputs), run_diffusers_ip(model, inputs, [embedding])) < TOLERANCE
    with pytest.raises(ValueError, match="blocks without attention"):
        ip.set_scale({"down": {"block_1": 1.0}})
    with pytest.raises(ValueError, match="3 values for 2 attentions"):
        ip.set_scale({"down": {"block_0": [1.0, 1.0, 1.0]}})
    with pytest.raises(ValueError, match="unknown scale keys"):
        ip.set_scale({"middle": 1.0})


def test_two_ip_adapters_stack_like_diffusers_multi_ip_adapter(tiny: TinyUNets) -> None:
    _, path, inputs = tiny("sdxl")
    model = fresh_diffusers(path)
    base, plus = make_h94(model, "base", IMAGE_DIM, seed=1), make_h94(model, "plus", IMAGE_DIM, seed=2)
    embeddings = [embedding_for("base", seed=6), embedding_for("plus", seed=7)]
    unet = refiners_sd.load_unet(path)
    before = snapshot(unet)
    bare = run_refiners(unet, inputs)
    first = IPAdapter.from_file(unet, base, scale=0.5).inject()
    second = IPAdapter.from_file(unet, plus, scale=0.9, name="style").inject()
    first.set_image_embedding(embeddings[0])
    second.set_image_embedding(embeddings[1])
    load_into_diffusers(model, [base, plus])
    set_diffusers_scale(model, [0.5, 0.9])
    assert max_diff(run_refiners(unet, inputs), run_diffusers_ip(model, inputs, embeddings)) < TOLERANCE
    first.eject()  # the one underneath goes first
    second.eject()
    assert_same_state(unet, before)
    assert torch.equal(run_refiners(unet, inputs), bare)


# ---- scale 0, eject -----------------------------------------------------------------------------


@pytest.mark.parametrize("topology", ["sd15", "sdxl"])
def test_scale_zero_is_the_bare_unet_and_eject_restores_it(tiny: TinyUNets, topology: str) -> None:
    model, path, inputs = tiny(topology)
    unet = refiners_sd.load_unet(path)
    before = snapshot(unet)
    attentions = [(attention, list(attention._modules.values())) for attention in unet.cross_attentions()]
    bare = run_refiners(unet, inputs)
    ip = IPAdapter.from_file(unet, make_h94(model, "plus", IMAGE_DIM), scale=0.0).inject()
    ip.set_image_embedding(embedding_for("plus"))
    assert torch.equal(run_refiners(unet, inputs), bare)
    ip.scale = 1.0
    assert not torch.equal(run_refiners(unet, inputs), bare)
    assert len(list(unet.layers(DecoupledCrossAttention))) == len(unet.cross_attentions())
    assert any(key.endswith("to_k_ip.weight") or "ImageKey" in key for key in unet.state_dict())
    ip.eject()
    assert not ip.is_injected and not list(unet.layers(ImageCrossAttention))
    assert_same_state(unet, before)
    for attention, children in attentions:  # the very same objects are back in place
        assert all(a is b for a, b in zip(attention._modules.values(), children, strict=True))
    assert torch.equal(run_refiners(unet, inputs), bare)
    ip.inject()  # inject again after eject: still works, and the image tokens are kept
    assert not torch.equal(run_refiners(unet, inputs), bare)
    ip.eject()


def test_self_attention_is_untouched_and_tree_is_readable(tiny: TinyUNets) -> None:
    model, path, _ = tiny("sd15")
    unet = refiners_sd.load_unet(path)
    ip = IPAdapter.from_file(unet, make_h94(model, "base", IMAGE_DIM)).inject()
    modules = refiners_sd.diffusers_module_map(unet, leaves_only=False)
    for name, module in modules.items():
        if name.endswith("attn1"):
            assert not list(module.layers(DecoupledCrossAttention))
        if name.endswith("attn2"):
            assert type(module["ScaledDotProductAttention"]) is DecoupledCrossAttention
    text = repr(unet)
    for part in ("DecoupledCrossAttention", "ImageCrossAttention", "ImageKey", "ImageValue", "SelectQuery"):
        assert part in text
    assert "IPAdapter(name='ip_adapter', variant='base', tokens=4" in repr(ip)
    ip.eject()


def test_h94_state_dict_round_trip_and_dtype(tiny: TinyUNets) -> None:
    model, path, inputs = tiny("sd15")
    state = make_h94(model, "plus", IMAGE_DIM)
    unet = refiners_sd.load_unet(path)
    ip = IPAdapter.from_file(unet, state)
    saved = ip.h94_state_dict()
    assert sorted(saved) == sorted(state)
    assert all(torch.equal(saved[key], state[key]) for key in state)
    half = refiners_sd.load_unet(path, dtype=torch.float64)
    ip64 = IPAdapter.from_file(half, state).inject()
    assert all(p.dtype == torch.float64 for p in ip64.parameters())
    ip64.set_image_embedding(embedding_for("plus"))  # float32 features are cast to the adapter's dtype
    assert (
        run_refiners(half, {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}).isfinite().all()
    )


# ---- image encoder ----------------------------------------------------------------------------------


def tiny_image_encoder() -> CLIPImageEncoder:
    """A 2-layer CLIP image encoder of ``IMAGE_DIM`` channels on 28x28 inputs (random weights)."""
    config = CLIPImageConfig(
        hidden_size=IMAGE_DIM,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
        projection_dim=IMAGE_DIM,
    )
    return CLIPImageEncoder(config).eval()


def test_compute_image_embedding_with_tiny_encoder(tiny: TinyUNets) -> None:
    model, path, _ = tiny("sd15")
    encoder = tiny_image_encoder()
    images = torch.rand(2, 3, 40, 36, generator=torch.Generator().manual_seed(8))
    unet = refiners_sd.load_unet(path)
    base = IPAdapter.from_file(unet, make_h94(model, "base", IMAGE_DIM))
    with pytest.raises(AdapterError, match="no image_encoder"):
        base.compute_image_embedding(images)
    base.image_encoder = encoder
    pixels = encoder.preprocess(images)
    output = encoder.encode(pixels)
    embedding = base.compute_image_embedding(images, classifier_free_guidance=True)
    assert torch.equal(embedding, torch.cat([torch.zeros_like(output.image_embeds), output.image_embeds]))
    plus = IPAdapter.from_file(unet, make_h94(model, "plus", IMAGE_DIM), image_encoder=encoder, name="plus")
    hidden = plus.compute_image_embedding(images)
    assert torch.equal(hidden, output.penultimate_hidden_state) and hidden.shape == (2, 5, IMAGE_DIM)
    negative = plus.compute_image_embedding(images, classifier_free_guidance=True)[:2]
    assert torch.equal(negative, encoder.encode(torch.zeros_like(pixels)).penultimate_hidden_state)
    with pytest.raises(ValueError, match="24-wide penultimate hidden states"):
        plus.set_image_embedding(torch.zeros(2, 5, 7))
    with pytest.raises(ValueError, match=r"\[B, D\] or \[B, n_images, D\]"):
        base.set_image_embedding(torch.zeros(2, 1, 5, IMAGE_DIM))


# ---- errors: nothing changes ------------------------------------------------------------------------


def test_errors_name_the_keys_and_leave_the_unet_alone(tiny: TinyUNets, tmp_path: Path) -> None:
    model, path, _ = tiny("sd15")
    sdxl_model, _, _ = tiny("sdxl")
    unet = refiners_sd.load_unet(path)
    before = snapshot(unet)
    state = make_h94(model, "base", IMAGE_DIM)
    missing = {key: value for key, value in state.items() if key != "ip_adapter.5.to_v_ip.weight"}
    with pytest.raises(WeightsError, match=r"missing keys: ip_adapter\.5\.to_v_ip\.weight"):
        IPAdapter.from_file(unet, missing)
    with pytest.raises(WeightsError, match=r"keys of no IP-Adapter layout: ip_adapter\.1\.to_q_ip\.weight"):
        IPAdapter.from_file(unet, {**state, "ip_adapter.1.to_q_ip.weight": torch.zeros(1)})
    with pytest.raises(WeightsError, match="made for another base model"):
        IPAdapter.from_file(unet, make_h94(sdxl_model, "plus", IMAGE_DIM))
    wide = {
        **state,
        "image_proj.proj.weight": torch.zeros(4 * 48, IMAGE_DIM),
        "image_proj.proj.bias": torch.zeros(4 * 48),
        "image_proj.norm.weight": torch.zeros(48),
        "image_proj.norm.bias": torch.zeros(48),
    }
    with pytest.raises(WeightsError, match="48-wide image tokens but .* 32-wide text tokens"):
        IPAdapter.from_file(unet, wide)
    wrong = {**state, "ip_adapter.3.to_k_ip.weight": torch.zeros(5, 32)}
    with pytest.raises(WeightsError, match=r"shape mismatch: ip_adapter\.3\.to_k_ip\.weight \(file \(5, 32\)"):
        IPAdapter.from_file(unet, wrong)
    with pytest.raises(WeightsError, match=r"missing keys: image_proj\.norm\.bias"):
        IPAdapter.from_file(unet, {key: value for key, value in state.items() if key != "image_proj.norm.bias"})
    faceid = {key: value for key, value in state.items() if not key.startswith("image_proj")}
    faceid.update({"image_proj.proj.0.weight": torch.zeros(1), "image_proj.norm.weight": torch.zeros(1)})
    with pytest.raises(WeightsError, match="FaceID"):
        IPAdapter.from_file(unet, faceid)
    torch.save(state, tmp_path / "ip-adapter.bin")
    with pytest.raises(PickleRefusedError):
        IPAdapter.from_file(unet, tmp_path / "ip-adapter.bin")
    torch.save({"image_proj": {}, "ip_adapter": {}}, tmp_path / "nested.bin")
    with pytest.raises(WeightsError, match="use the .safetensors release"):
        IPAdapter.from_file(unet, tmp_path / "nested.bin", allow_pickle=True)
    assert_same_state(unet, before)
    # a nested state dict (the .bin layout) is read like a flat one
    nested = {"image_proj": {}, "ip_adapter": {}}
    for key, value in state.items():
        group, _, rest = key.partition(".")
        nested[group][rest] = value
    assert parse_h94(nested).variant == "base"


def test_inject_is_all_or_nothing(tiny: TinyUNets) -> None:
    model, path, _ = tiny("sd15")
    unet = refiners_sd.load_unet(path)
    before = snapshot(unet)
    first = IPAdapter.from_file(unet, make_h94(model, "base", IMAGE_DIM)).inject()
    with pytest.raises(AdapterError, match="already injected"):
        first.inject()
    clash = IPAdapter.from_file(unet, make_h94(model, "base", IMAGE_DIM, seed=3))
    with pytest.raises(AdapterError, match="another IP-Adapter named 'ip_adapter'"):
        clash.inject()
    assert not clash.is_injected
    broken = IPAdapter.from_file(unet, make_h94(model, "base", IMAGE_DIM, seed=4), name="broken")
    target = broken.adapters[-1]
    target.__dict__["_adapter_target"] = rc.Identity()  # a target that is not in any Chain
    with pytest.raises(AdapterError):
        broken.inject()
    assert not any(adapter.is_injected for adapter in broken.adapters)
    first.eject()
    with pytest.raises(AdapterError, match="not injected"):
        first.eject()
    assert_same_state(unet, before)


def test_rejects_non_unets() -> None:
    with pytest.raises(AdapterError, match="refiners-sd UNets"):
        IPAdapter(rc.Chain(rc.Linear(2, 2)), None)  # type: ignore[arg-type]


# ---- plugin and registry ------------------------------------------------------------------------------


def test_plugin_declares_the_family_without_torch() -> None:
    code = (
        "import sys; from refiners_ip_adapter.plugin import refiners_adapter_families as f; "
        "family = f()[0]; assert 'torch' not in sys.modules, 'torch imported'; "
        "print(family.name, family.loader, family.base_models, family.formats)"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split("\n")[0] == "ip-adapter refiners_ip_adapter.loader:load_ip_adapter ('sd15', 'sdxl') ('h94',)"


def test_registry_load_adapter_uses_the_ip_adapter_family(tiny: TinyUNets, tmp_path: Path) -> None:
    import refiners_registry as registry

    _, path, inputs = tiny("sd15")
    model = fresh_diffusers(path)
    state = make_h94(model, "plus", IMAGE_DIM)
    file = save_state_dict(state, tmp_path / "ip-adapter-plus_sd15.safetensors")
    unet = refiners_sd.load_unet(path)
    before = snapshot(unet)
    ip = registry.load_adapter(unet, file, family="ip-adapter", scale=0.5)
    assert isinstance(ip, IPAdapter) and ip.is_injected and ip.scale == 0.5
    ip.set_image_embedding(embedding_for("plus"))
    load_into_diffusers(model, [state])
    set_diffusers_scale(model, 0.5)
    assert max_diff(run_refiners(unet, inputs), run_diffusers_ip(model, inputs, [embedding_for("plus")])) < TOLERANCE
    ip.eject()
    assert_same_state(unet, before)
    from_folder = registry.load_adapter(unet, tmp_path, family="ip-adapter")  # a folder holding one file
    assert from_folder.variant == "plus"
    from_folder.eject()
    with pytest.raises(AdapterError, match="unknown ip-adapter options: bogus"):
        registry.load_adapter(unet, file, family="ip-adapter", bogus=1)


def test_set_image_serves_batches_with_and_without_guidance(tiny: TinyUNets) -> None:
    """``set_image`` needs no guidance flag: a UNet batch of 2B (guidance) reads [negative, positive] tokens, a
    batch of B the positive half, as the explicit embeddings give."""
    model, path, inputs = tiny("sd15")  # BATCH = 2: the guided batch of one image
    encoder = tiny_image_encoder()
    image = torch.rand(1, 3, 40, 36, generator=torch.Generator().manual_seed(9))
    unet = refiners_sd.load_unet(path)
    adapter = IPAdapter.from_file(unet, make_h94(model, "plus", IMAGE_DIM), image_encoder=encoder).inject()
    assert isinstance(adapter, rc.ImageAdapter)
    single = {key: value[1:] for key, value in inputs.items()}  # the positive half alone: no guidance
    adapter.set_image(image)
    guided, unguided = run_refiners(unet, inputs), run_refiners(unet, single)
    adapter.set_image_embedding(adapter.compute_image_embedding(image, classifier_free_guidance=True))
    assert torch.equal(run_refiners(unet, inputs), guided)
    adapter.set_image_embedding(adapter.compute_image_embedding(image))
    # the projection of one image alone vs in a batch of two: equal up to float reordering
    assert max_diff(run_refiners(unet, single), unguided) < TOLERANCE
    adapter.remove()
    assert not adapter.is_injected
