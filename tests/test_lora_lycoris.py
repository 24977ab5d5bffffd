"""refiners-lora: every LyCORIS algorithm (LoCon + Tucker, LoHa, LoKr, DoRA, full diff, (IA)^3, OFT,
BOFT, GLoRA, norm) and PEFT's LoHa, LoKr, DoRA, OFT and BOFT against their reference implementations on tiny SD1.5 and
SDXL UNets: unfused, fused, rescaled and removed.

The lycoris-lora modules are applied to the diffusers UNet (their forward is the reference) and
their own state dicts are written with LyCORIS key names (``lycoris_<module>.<suffix>``).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from refiners_lora import LoraError, LoraManager
from safetensors import safe_open
from test_lora import assert_same, snapshot
from torch import nn

ATOL = 1e-4
os.environ.setdefault("LYCORIS_KERNEL_BACKEND", "torch")  # the plain torch reference, no kernel probing
# kinds of layers each file targets: 3x3 and 1x1 convolutions, attention and feed-forward linears
TARGET_SUFFIXES = (
    "down_blocks.0.resnets.0.conv1",
    "down_blocks.1.resnets.0.conv_shortcut",
    "attn1.to_q",
    "attn2.to_v",
    "ff.net.2",
    "proj_in",
    "time_embedding.linear_1",
    "conv_in",
)
# scale-linear algorithms: lycoris' multiplier is ours
LINEAR_IN_SCALE = {"locon", "locon_tucker", "loha", "loha_tucker", "lokr", "lokr_tucker", "lokr_whole"}
LINEAR_IN_SCALE |= {"full", "ia3", "ia3_input", "glora", "glora_tucker"}
# lycoris' multiplier moves each BOFT stage toward the identity and leaves `rescale` at full strength;
# refiners scales the whole change, s * (W' - W), as for OFT: only scale 1 is compared


def lycoris_cases() -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (lycoris module class name, its keyword arguments)."""
    low_rank = {"lora_dim": 4, "alpha": 2}
    return {
        "locon": ("LoConModule", low_rank),
        "locon_tucker": ("LoConModule", {**low_rank, "use_tucker": True}),
        "loha": ("LohaModule", low_rank),
        "loha_tucker": ("LohaModule", {**low_rank, "use_tucker": True}),
        "lokr": ("LokrModule", {**low_rank, "factor": 4, "decompose_both": True}),
        "lokr_tucker": ("LokrModule", {**low_rank, "factor": 4, "use_tucker": True}),
        "lokr_whole": ("LokrModule", {"lora_dim": 4, "alpha": 3, "factor": 4, "full_matrix": True}),
        "dora_output": ("LoConModule", {**low_rank, "weight_decompose": True}),
        "dora_input": ("LoConModule", {**low_rank, "weight_decompose": True, "wd_on_out": False}),
        "doha": ("LohaModule", {**low_rank, "weight_decompose": True}),
        "dokr": ("LokrModule", {**low_rank, "factor": 4, "decompose_both": True, "weight_decompose": True}),
        "full": ("FullModule", {}),
        "ia3": ("IA3Module", {}),
        "ia3_input": ("IA3Module", {"train_on_input": True}),
        "oft": ("DiagOFTModule", {"lora_dim": 4, "constraint": 0, "rescaled": True}),
        "glora": ("GLoRAModule", low_rank),
        "glora_tucker": ("TuckerGLoRAModule", {**low_rank, "use_tucker": True}),
        "boft": ("ButterflyOFTModule", {"lora_dim": 4, "constraint": 0, "rescaled": True}),
        "boft_constrained": ("ButterflyOFTModule", {"lora_dim": 2, "constraint": 1e-4}),
    }


def _tucker_glora_module() -> type[nn.Module]:
    """lycoris' GLoRAModule with the Tucker core ``bm`` on kxk convolutions.

    In lycoris-lora 4.1.3 ``use_tucker`` never reaches that branch (the constructor keeps it only for
    1x1 kernels, then builds ``bm`` only for other kernels), so no keyword argument writes ``bm.weight``;
    this subclass builds the layers that branch describes (1x1 ``b2``, kxk ``bm`` with the layer's
    stride and padding). lycoris' own forward (``make_weight``) then contracts ``bm``.
    """
    from lycoris.modules import GLoRAModule

    class TuckerGLoRAModule(GLoRAModule):  # type: ignore[misc]
        def __init__(self, lora_name: str, org_module: nn.Module, multiplier: float, **kwargs: Any) -> None:
            super().__init__(lora_name, org_module, multiplier, **kwargs)
            if isinstance(org_module, nn.Conv2d) and org_module.kernel_size != (1, 1):
                rank = kwargs["lora_dim"]
                self.b2 = nn.Conv2d(org_module.in_channels, rank, 1, bias=False)
                geometry = (org_module.kernel_size, org_module.stride, org_module.padding)
                self.bm = nn.Conv2d(rank, rank, *geometry, bias=False)
                self.tucker = True

    return TuckerGLoRAModule


def _module_class(class_name: str) -> Any:
    import lycoris.modules as modules

    return _tucker_glora_module() if class_name == "TuckerGLoRAModule" else getattr(modules, class_name)


@torch.no_grad()
def _randomize(module: nn.Module, generator: torch.Generator) -> None:
    for name, parameter in module.named_parameters():
        noise = torch.randn(parameter.shape, generator=generator)
        if name == "dora_scale" or name == "rescale":
            parameter.mul_(1 + 0.1 * noise)
        elif type(module).__name__ == "FullModule":
            parameter.add_(0.05 * noise)
        elif name == "oft_blocks":
            parameter.copy_(0.05 * noise)
        else:
            parameter.copy_(0.2 * noise)


class LycorisCase:
    """A tiny diffusers UNet, its refiners twin, and lycoris references for one file's modules."""

    def __init__(self, directory: Path, config: dict[str, Any]) -> None:
        import refiners_sd
        from sd_fixtures import make_tiny_unet, run_diffusers

        tiny = make_tiny_unet(directory, config, batch=1, height=8, width=8)
        self.thorough = not config.get("addition_embed_type")  # rescaling is checked on SD1.5 only (time)
        self.model, self.inputs = tiny.model, tiny.inputs
        self.base = run_diffusers(self.model, self.inputs)
        self.unet = refiners_sd.load_unet(tiny.path)
        self.targets = sorted(
            name
            for name, module in self.model.named_modules()
            if name.endswith(TARGET_SUFFIXES) and isinstance(module, nn.Linear | nn.Conv2d)
        )
        self.config = config

    def reference(
        self, plan: dict[str, tuple[str, dict[str, Any]]], seed: int = 0
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Apply lycoris modules (``plan``: module name -> (class, kwargs)); return their state dict in
        LyCORIS key names, the output at multiplier 1 and at multiplier 0.5."""
        from sd_fixtures import run_diffusers

        generator = torch.Generator().manual_seed(seed)
        applied = []
        state: dict[str, torch.Tensor] = {}
        for name, (class_name, kwargs) in plan.items():
            lora_name = f"lycoris_{name.replace('.', '_')}"
            module = _module_class(class_name)(lora_name, self.model.get_submodule(name), 1.0, **kwargs)
            _randomize(module, generator)
            module.apply_to()
            applied.append(module)
            state.update({f"{lora_name}.{key}": value.detach().clone() for key, value in module.state_dict().items()})
        try:
            full = run_diffusers(self.model, self.inputs)
            half = full
            if self.thorough:
                for module in applied:
                    module.multiplier = 0.5
                half = run_diffusers(self.model, self.inputs)
        finally:
            for module in reversed(applied):
                module.restore()
        return state, full, half

    def ours(self) -> torch.Tensor:
        from sd_fixtures import run_refiners

        return run_refiners(self.unet, self.inputs)


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LycorisCase:
    pytest.importorskip("lycoris")
    from sd_fixtures import TINY_SD15, TINY_SDXL

    config = {"sd15": TINY_SD15, "sdxl": TINY_SDXL}[request.param]
    return LycorisCase(tmp_path_factory.mktemp(request.param), config)


def _check_file(
    case: LycorisCase, state: dict[str, torch.Tensor], full: torch.Tensor, half: torch.Tensor | None
) -> dict[str, float]:
    """Load ``state``, compare unfused / fused / rescaled / removed; return the max errors."""
    before = snapshot(case.unet)
    manager = LoraManager(case.unet)
    errors: dict[str, float] = {}
    try:
        manager.add("file", state)
        assert len(manager.layers_of("file")) == len({key.split(".")[0] for key in state})
        assert (full - case.base).abs().max() > 1e-3  # the file does change the output
        out = case.ours()
        errors["unfused"] = float((out - full).abs().max())
        torch.testing.assert_close(out, full, atol=ATOL, rtol=0)
        manager.fuse()
        out = case.ours()
        errors["fused"] = float((out - full).abs().max())
        torch.testing.assert_close(out, full, atol=ATOL, rtol=0)
        if not case.thorough:
            return errors
        manager.set_scale("file", 0.5)
        fused_half = case.ours()
        manager.unfuse()
        unfused_half = case.ours()
        torch.testing.assert_close(fused_half, unfused_half, atol=ATOL, rtol=0)
        if half is not None:
            errors["rescaled"] = float((unfused_half - half).abs().max())
            torch.testing.assert_close(unfused_half, half, atol=ATOL, rtol=0)
        manager.set_scale("file", 0.0)
        torch.testing.assert_close(case.ours(), case.base, atol=ATOL, rtol=0)
        manager.set_scale("file", 1.0)
    finally:
        manager.remove_all()
    assert_same(case.unet, before)  # removed: bit-exact (unfused before removal)
    return errors


@pytest.mark.parametrize("algorithm", list(lycoris_cases()))
def test_lycoris_parity(case: LycorisCase, algorithm: str) -> None:
    class_name, kwargs = lycoris_cases()[algorithm]
    state, full, half = case.reference({name: (class_name, kwargs) for name in case.targets})
    if algorithm == "glora_tucker":
        assert any(key.endswith(".bm.weight") for key in state)
    _check_file(case, state, full, half if algorithm in LINEAR_IN_SCALE else None)


NORM_SUFFIXES = ("resnets.0.norm1", "attentions.0.norm", "transformer_blocks.0.norm2", "conv_norm_out")


def test_lycoris_norm(case: LycorisCase) -> None:
    # LyCORIS w_norm / b_norm on GroupNorm (resnets, attention blocks, output) and LayerNorm layers
    norms = sorted(
        name
        for name, module in case.model.named_modules()
        if name.endswith(NORM_SUFFIXES) and isinstance(module, nn.GroupNorm | nn.LayerNorm)
    )
    assert {type(case.model.get_submodule(name)) for name in norms} == {nn.GroupNorm, nn.LayerNorm}
    state, full, half = case.reference({name: ("NormModule", {}) for name in norms})
    assert any(key.endswith(".b_norm") for key in state)
    _check_file(case, state, full, half)


def test_lycoris_mixed_file(case: LycorisCase) -> None:
    if not case.thorough:
        pytest.skip("format-level check: SD1.5 is enough")
    cases = list(lycoris_cases().values())
    plan = {name: cases[index % len(cases)] for index, name in enumerate(case.targets)}
    state, full, _ = case.reference(plan, seed=1)
    assert len({key.split(".", 1)[1].split(".")[0] for key in state}) > 5
    _check_file(case, state, full, None)


def test_kohya_dora_scale_scales_from_the_base_model(case: LycorisCase) -> None:
    if not case.thorough:
        pytest.skip("format-level check: SD1.5 is enough")
    # kohya / LyCORIS DoRA at strength s: W + s * (W_dora - W), so the output at 0.5 lies between
    # the base and the full DoRA only through W; check the weight itself
    plan = {case.targets[0]: ("LoConModule", {"lora_dim": 4, "alpha": 2, "weight_decompose": True})}
    state, _, _ = case.reference(plan, seed=2)
    manager = LoraManager(case.unet)
    try:
        manager.add("dora", state)
        (delta,) = manager.layers_of("dora").values()
        weight = delta.target.weight.detach().clone()
        torch.testing.assert_close(delta.delta_at(weight, 0.5), 0.5 * delta.delta_at(weight, 1.0))
    finally:
        manager.remove_all()


def test_wrong_layer_kind_and_mixed_keys_are_listed(case: LycorisCase) -> None:
    if not case.thorough:
        pytest.skip("format-level check: SD1.5 is enough")
    before = snapshot(case.unet)
    name = f"lycoris_{case.targets[0].replace('.', '_')}"
    manager = LoraManager(case.unet)
    with pytest.raises(LoraError, match=f"{name}.*norm targets must be GroupNorm or LayerNorm"):
        manager.add("x", {f"{name}.w_norm": torch.zeros(4)})
    with pytest.raises(LoraError, match=f"mixing algorithms.*{name}.hada_w1_a"):
        manager.add("x", {f"{name}.hada_w1_a": torch.zeros(4, 2), f"{name}.lokr_w1": torch.zeros(2, 2)})
    with pytest.raises(LoraError, match=f"{name}.*NaN or infinite"):
        state, _, _ = case.reference({case.targets[0]: ("LohaModule", {"lora_dim": 2, "alpha": 1})})
        state[f"{name}.hada_w1_a"][0, 0] = float("nan")
        manager.add("x", state)
    with pytest.raises(LoraError, match=f"{name}.alpha must be a scalar"):
        manager.add("x", {**state, f"{name}.hada_w1_a": torch.zeros(state[f"{name}.hada_w1_a"].shape),
                          f"{name}.alpha": torch.ones(2)})  # fmt: skip
    assert_same(case.unet, before)


# ---- PEFT LoHa, LoKr, DoRA, OFT and BOFT ------------------------------------------------------------------


def _peft_file(
    case: LycorisCase, config: Any, path: Path, scalable: bool = False
) -> tuple[Path, torch.Tensor, torch.Tensor | None]:
    """Write ``config``'s adapter (random weights) on the diffusers UNet in PEFT format; return the file,
    peft's output and, when ``scalable``, peft's output with every layer scaled by 0.5."""
    import json

    from peft import inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file
    from sd_fixtures import run_diffusers

    model = inject_adapter_in_model(config, copy.deepcopy(case.model))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if any(part in name for part in ("hada_", "lokr_", "lora_A", "lora_B", "oft_R", "boft_R")):
                parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator))
            elif "lora_magnitude_vector" in name or "boft_s" in name:
                parameter.mul_(1 + 0.1 * torch.randn(parameter.shape, generator=generator))
    expected = run_diffusers(model, case.inputs)
    state = get_peft_model_state_dict(model)
    tuners = [module for module in model.modules() if isinstance(module, BaseTunerLayer)]
    half = None
    if scalable:
        for module in tuners:
            module.scale_layer(0.5)
        half = run_diffusers(model, case.inputs)
    for module in tuners:
        module._disable_adapters = True
    metadata = {"lora_adapter_metadata": json.dumps(config.to_dict(), default=sorted)}
    save_file({f"unet.{key}": value.contiguous() for key, value in state.items()}, path, metadata=metadata)
    return path, expected, half


def _peft_reads(case: LycorisCase, path: Path) -> torch.Tensor:
    """peft's own output for a PEFT-layout file written by refiners-lora, its config rebuilt from the header."""
    import dataclasses
    import json

    from peft import inject_adapter_in_model, set_peft_model_state_dict
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from safetensors.torch import load_file
    from sd_fixtures import run_diffusers

    with safe_open(path, "pt") as file:
        header = json.loads(file.metadata()["lora_adapter_metadata"])
    fields = {key.removeprefix("unet."): value for key, value in header.items() if key.startswith("unet.")}
    config_class = PEFT_TYPE_TO_CONFIG_MAPPING[fields.pop("peft_type")]
    assert set(fields) <= {field.name for field in dataclasses.fields(config_class)}  # all of them peft's fields
    model = inject_adapter_in_model(config_class(**fields), copy.deepcopy(case.model))
    state = {key.removeprefix("unet."): value for key, value in load_file(path).items()}
    assert not set_peft_model_state_dict(model, state).unexpected_keys
    return run_diffusers(model, case.inputs)


def _peft_config(kind: str, targets: list[str]) -> Any:
    from peft import BOFTConfig, LoHaConfig, LoKrConfig, LoraConfig, OFTConfig

    if kind == "loha":
        return LoHaConfig(r=4, alpha=2, target_modules=targets, init_weights=False)
    if kind == "loha_tucker":
        return LoHaConfig(r=4, alpha=2, target_modules=targets, use_effective_conv2d=True, init_weights=False)
    if kind == "oft":
        return OFTConfig(r=0, oft_block_size=4, target_modules=targets, init_weights=False)
    if kind == "oft_cayley":
        return OFTConfig(r=0, oft_block_size=4, target_modules=targets, use_cayley_neumann=False, init_weights=False)
    if kind == "boft":
        return BOFTConfig(boft_block_size=4, boft_n_butterfly_factor=1, target_modules=targets, init_weights=False)
    if kind == "boft_butterfly":
        return BOFTConfig(boft_block_size=2, boft_n_butterfly_factor=2, target_modules=targets, init_weights=False)
    if kind == "lokr":
        return LoKrConfig(r=4, alpha=2, target_modules=targets, decompose_both=True, init_weights=False)
    return LoraConfig(r=4, lora_alpha=2, target_modules=targets, use_dora=True, init_lora_weights=False)


def _peft_targets(case: LycorisCase, kind: str) -> list[str]:
    if not kind.startswith("oft"):
        return case.targets
    # PEFT's unmerged OFT of a kxk convolution rotates overlapping input patches, which its own merged
    # weight does not reproduce; refiners follows the merged weight, so only linears and 1x1 convs here
    return [name for name in case.targets if getattr(case.model.get_submodule(name), "kernel_size", (1, 1)) == (1, 1)]


def _peft_block_diagonal(monkeypatch: pytest.MonkeyPatch) -> None:
    """PEFT builds BOFT's block-diagonal stages with a CUDA extension, and falls back to one stage without it;
    its CPU fallback (``torch.block_diag`` of each stage's blocks) stands in for the extension."""
    import peft.tuners.boft.layer as boft_layer

    def block_diagonal(blocks: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.block_diag(*stage) for stage in blocks])

    monkeypatch.setattr(boft_layer, "_FBD_CUDA", object())
    monkeypatch.setattr(boft_layer.FastBlockDiag, "apply", staticmethod(block_diagonal))


PEFT_KINDS = ["loha", "loha_tucker", "lokr", "dora", "oft", "oft_cayley", "boft", "boft_butterfly"]
PEFT_SCALABLE = {"loha", "loha_tucker", "lokr", "dora"}


@pytest.mark.parametrize("kind", PEFT_KINDS)
def test_peft_parity(case: LycorisCase, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if kind.startswith("boft"):
        _peft_block_diagonal(monkeypatch)
    targets = _peft_targets(case, kind)
    scalable = kind in PEFT_SCALABLE  # PEFT ignores scaling for OFT and BOFT
    path, expected, half = _peft_file(case, _peft_config(kind, targets), tmp_path / f"{kind}.safetensors", scalable)
    before = snapshot(case.unet)
    manager = LoraManager(case.unet)
    try:
        manager.add(kind, path)
        assert len(manager.layers_of(kind)) == len(targets)
        if kind == "boft_butterfly":
            assert {delta.state()["boft_R"].shape[0] for delta in manager.layers_of(kind).values()} == {2}
        assert (expected - case.base).abs().max() > 1e-3  # the file does change the output
        torch.testing.assert_close(case.ours(), expected, atol=ATOL, rtol=0)
        manager.fuse()
        torch.testing.assert_close(case.ours(), expected, atol=ATOL, rtol=0)
        if half is not None:  # rescaled, fused and unfused, against peft's scale_layer(0.5)
            assert (half - expected).abs().max() > 1e-3
            manager.set_scale(kind, 0.5)
            torch.testing.assert_close(case.ours(), half, atol=ATOL, rtol=0)
            manager.unfuse()
            torch.testing.assert_close(case.ours(), half, atol=ATOL, rtol=0)
            manager.fuse()
        else:  # peft ignores scaling for OFT and BOFT: ours, s * (W' - W), fused equals unfused and lies in between
            manager.set_scale(kind, 0.5)
            fused_half = case.ours()
            manager.unfuse()
            torch.testing.assert_close(case.ours(), fused_half, atol=ATOL, rtol=0)
            assert min((fused_half - expected).abs().max(), (fused_half - case.base).abs().max()) > 1e-4
            manager.fuse()
        if kind != "dora":  # PEFT DoRA at scale 0 keeps its magnitude: m * W / ||W||, not W
            manager.set_scale(kind, 0.0)
            torch.testing.assert_close(case.ours(), case.base, atol=ATOL, rtol=0)
        manager.unfuse()
        # saved (PEFT layout for the PEFT-only algorithms, LyCORIS keys for LoHa) and read back: the same
        saved = manager.save(kind, tmp_path / "saved.safetensors")
        with safe_open(saved, "pt") as file:
            assert all(key.startswith("unet.") for key in file.keys()) == (kind not in ("loha", "loha_tucker"))
        if kind not in ("loha", "loha_tucker"):  # and peft reads the PEFT layout back, with its own result
            torch.testing.assert_close(_peft_reads(case, saved), expected, atol=ATOL, rtol=0)
        manager.remove(kind)
        manager.add("saved", saved)
        torch.testing.assert_close(case.ours(), expected, atol=ATOL, rtol=0)
    finally:
        manager.remove_all()
    assert_same(case.unet, before)


def test_saved_lycoris_file_reloads_the_same(case: LycorisCase, tmp_path: Path) -> None:
    if not case.thorough:
        pytest.skip("format-level check: SD1.5 is enough")
    cases = list(lycoris_cases().values())
    plan = {name: cases[(index + 3) % len(cases)] for index, name in enumerate(case.targets)}
    state, full, _ = case.reference(plan, seed=3)
    manager = LoraManager(case.unet)
    try:
        manager.add("a", state)
        path = manager.save("a", tmp_path / "saved.safetensors")
        manager.remove("a")
        manager.add("b", path)
        torch.testing.assert_close(case.ours(), full, atol=ATOL, rtol=0)
    finally:
        manager.remove_all()
