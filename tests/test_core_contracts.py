"""The core's contract pieces: AdapterGroup, image_to_tensor, and resolution of names through the hooks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

import refiners_core as rc
from refiners_core.plugins import adapter_families
from refiners_core.plugins.resolution import ResolutionError, load_adapter, load_base_model


class Scaled(rc.Chain, rc.Adapter[rc.Linear]):
    def __init__(self, target: rc.Linear) -> None:
        with self.setup_adapter(target):
            super().__init__(target, rc.Multiply(1.0))

    @property
    def scale(self) -> float:
        return self.Multiply.scale

    @scale.setter
    def scale(self, value: float) -> None:
        self.Multiply.scale = value


def test_adapter_group_injects_all_or_nothing_scales_and_removes_exactly() -> None:
    model = rc.Chain(rc.Linear(4, 4, bias=False), rc.Linear(4, 4, bias=False))
    first, second = model.Linear_1, model.Linear_2
    x = torch.randn(2, 4)
    reference = model(x)
    group = rc.AdapterGroup("double", [Scaled(first), Scaled(second)], scale=2.0).inject()
    assert isinstance(group, rc.LoadedAdapter)
    assert torch.allclose(model(x), 4 * reference, atol=1e-5)
    group.scale = 0.5
    assert torch.allclose(model(x), 0.25 * reference, atol=1e-5)
    group.remove()
    assert model.Linear_1 is first and model.Linear_2 is second
    assert torch.equal(model(x), reference)

    stranger = rc.Linear(4, 4)  # not inside any Chain: the second injection fails, the first is undone
    failing = rc.AdapterGroup("bad", [Scaled(first), Scaled(stranger)])
    with pytest.raises(rc.AdapterError):
        failing.inject()
    assert model.Linear_1 is first and not failing.is_injected


def test_image_to_tensor_pil_equals_tensor() -> None:
    pixels = torch.randint(0, 256, (5, 7, 3), dtype=torch.uint8)
    image = Image.fromarray(pixels.numpy(), mode="RGB")
    from_pil = rc.image_to_tensor(image)
    assert from_pil.shape == (1, 3, 5, 7)
    assert torch.equal(from_pil, pixels.permute(2, 0, 1)[None].float() / 255)
    assert torch.equal(rc.image_to_tensor(from_pil[0]), from_pil)
    assert rc.image_to_tensor(image, mode="L").shape == (1, 1, 5, 7)
    with pytest.raises(rc.RefinersError, match=r"\[0, 1\]"):
        rc.image_to_tensor(from_pil * 2 - 1)
    with pytest.raises(rc.RefinersError, match="channels"):
        rc.image_to_tensor(from_pil, mode="L")


PLUGIN = """
from refiners_core import AdapterFamily, BaseModelFamily, NameResolver, hookimpl


@hookimpl
def refiners_adapter_families():
    return [AdapterFamily(name="acme", description="d", loader="acme_impl:load", base_models=("toy",),
                          detect="acme_impl:is_acme")]


@hookimpl
def refiners_base_models():
    return [BaseModelFamily(name="toy", description="d", loader="acme_impl:build", detect="acme_impl:is_toy")]


@hookimpl
def refiners_name_resolvers():
    return [NameResolver(name="acme", description="d", resolver="acme_impl:resolve")]
"""

IMPL = """
from pathlib import Path
from refiners_core import Resolved

FILES = {}


class Toy:
    architecture = "toy"

    def __init__(self, path, options):
        self.path, self.options, self.loaded = path, options, []


def build(path, *, device=None, dtype=None, **options):
    return Toy(path, options)


def load(target, weights, *, scale=1.0, **options):
    target.loaded.append((Path(weights).name, scale, options))
    return target.loaded[-1]


def is_toy(path):
    return path.suffix == ".toy"


def is_acme(path):
    return path.suffix == ".acme"


def resolve(name, *, report=None, allow_pickle=False, base_model=None):
    if name in FILES:
        return Resolved(**FILES[name])
    return None
"""


def test_resolution_through_hooks(make_plugin_dist, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    make_plugin_dist("refiners-acme", PLUGIN, extra_modules={"acme_impl": IMPL})
    import acme_impl  # type: ignore[import-not-found]

    assert "acme" in adapter_families()
    base = tmp_path / "model.toy"
    base.write_text("")
    weights = tmp_path / "style.acme"
    weights.write_text("")
    pipeline = load_base_model(str(base), solver="x")
    assert pipeline.options == {"solver": "x"}
    assert load_adapter(pipeline, str(weights), scale=0.5) == ("style.acme", 0.5, {})

    acme_impl.FILES["cat/base"] = {"path": base, "family": "base-model", "base_model": "toy"}
    acme_impl.FILES["cat/style"] = {"path": weights, "family": "acme", "base_model": "other"}
    assert load_base_model("cat/base").path == base
    with pytest.raises(ResolutionError, match="for other, but the base model is toy"):
        load_adapter(pipeline, "cat/style")
    with pytest.raises(ResolutionError, match="not a base model"):
        load_base_model("cat/style")
    with pytest.raises(ResolutionError, match="no installed base-model plugin recognises"):
        load_base_model(str(weights))
    with pytest.raises(ResolutionError, match="nor a name any resolver knows"):
        load_base_model("cat/missing")
    with pytest.raises(ResolutionError, match="no installed plugin provides the adapter family 'nope'"):
        load_adapter(pipeline, str(weights), family="nope")
