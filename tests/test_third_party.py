"""A third-party base model and a third-party adapter family, each a real distribution built here, work through
``refiners plugins``, ``refiners generate``, ``refiners demo-assets`` and ``load_adapter`` with no change to the
in-tree packages: the contracts of refiners-core are all they use.

``refiners-toybase`` provides the ``toy`` base model: a ``.toy`` JSON file describing a seeded Chain that paints an
image from noise. ``refiners-glow`` provides the ``glow`` family: a reference-image adapter that brightens the
first Linear of any pipeline's first component by the image's mean, times its gain and scale.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from plugin_fixtures import MakePluginDist

import refiners_core as rc
from refiners_core.plugins.resolution import ResolutionError, load_adapter, load_base_model

TOYBASE_PLUGIN = """
from refiners_core import BaseModelFamily, hookimpl


@hookimpl
def refiners_base_models():
    return [BaseModelFamily(name="toy", description="a toy painter", loader="toybase_impl:load",
                            detect="toybase_impl:detect", demo="toybase_impl:demo", options=("palette",))]
"""

TOYBASE_IMPL = '''
import json
from pathlib import Path

import torch
from PIL import Image

import refiners_core as rc


class ToyPipeline:
    """Follows refiners_core.contracts.Pipeline."""

    architecture = "toy"
    default_size = 16
    size_multiple = 4

    def __init__(self, config, device=None, dtype=None, palette=1.0):
        torch.manual_seed(config["seed"])
        self.painter = rc.Chain(rc.Linear(3, 8), rc.Linear(8, 3)).to(device=device, dtype=dtype or torch.float32)
        self.palette = float(palette)

    @property
    def device(self):
        return next(self.painter.parameters()).device

    @property
    def dtype(self):
        return next(self.painter.parameters()).dtype

    def components(self):
        return {"painter": self.painter}

    def conventions(self, component):
        return ("refiners",) if component == "painter" else ()

    def module_names(self, component, convention):
        if component != "painter" or convention != "refiners":
            raise rc.RefinersError(f"no {convention!r} names for {component!r}")
        return {name: layer for name, layer in self.painter.named_modules() if name}

    @torch.no_grad()
    def generate(self, prompt, *, negative_prompt=None, steps=30, guidance=7.5, seed=0, width=None, height=None,
                 callback=None):
        width, height = width or self.default_size, height or self.default_size
        generator = torch.Generator().manual_seed(seed + len(prompt))
        pixels = torch.randn(height * width, 3, generator=generator)
        for step in range(steps):
            pixels = torch.tanh(self.painter(pixels))
            if callback is not None:
                callback(step + 1, steps)
        values = ((pixels * 0.5 + 0.5) * 255 * self.palette).clamp(0, 255).to(torch.uint8)
        return Image.frombytes("RGB", (width, height), values.reshape(height, width, 3).numpy().tobytes())


def load(path, *, device=None, dtype=None, palette=1.0):
    return ToyPipeline(json.loads(Path(path).read_text()), device, dtype, palette)


def detect(path):
    return Path(path).suffix == ".toy"


def demo(folder, *, seed=0):
    path = Path(folder) / "base.toy"
    path.write_text(json.dumps({"seed": seed}))
    return path
'''

GLOW_PLUGIN = """
from refiners_core import AdapterFamily, hookimpl


@hookimpl
def refiners_adapter_families():
    return [AdapterFamily(name="glow", description="brightens by a reference image", loader="glow_impl:load",
                          takes="reference-image", demo="glow_impl:demo", detect="glow_impl:detect",
                          aliases=("glow-adapter",))]
"""

GLOW_IMPL = '''
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import refiners_core as rc


class Glow(rc.Chain, rc.Adapter[rc.Linear]):
    """Follows refiners_core.contracts.ImageAdapter."""

    def __init__(self, target, gain, scale):
        with self.setup_adapter(target):
            super().__init__(target, rc.Multiply(1.0))
        self.gain, self._scale, self.brightness = gain, scale, 0.0

    def _apply(self):
        self.ensure_find(rc.Multiply).scale = 1.0 + self._scale * self.gain * self.brightness

    @property
    def scale(self):
        return self._scale

    @scale.setter
    def scale(self, value):
        self._scale = float(value)
        self._apply()

    def set_image(self, image):
        self.brightness = float(rc.image_to_tensor(image).mean())
        self._apply()

    def remove(self):
        self.eject()


def load(target, weights, *, scale=1.0, **options):
    if options:
        raise rc.AdapterError(f"unknown glow options: {sorted(options)}")
    component = next(iter(target.components().values())) if hasattr(target, "components") else target
    gain = float(load_file(str(weights))["gain"])
    return Glow(component.ensure_find(rc.Linear), gain, scale).inject()


def detect(path):
    return Path(path).name.endswith(".glow.safetensors")


def demo(folder, pipeline, *, seed=0):
    path = Path(folder) / "style.glow.safetensors"
    save_file({"gain": torch.tensor(2.0)}, str(path))
    image = Path(folder) / "glow.png"
    rc.write_demo_reference_image(image)
    return rc.DemoAsset(family="glow", path=path, image=image)
'''


@pytest.fixture
def third_party(make_plugin_dist: MakePluginDist) -> None:
    make_plugin_dist("refiners-toybase", TOYBASE_PLUGIN, extra_modules={"toybase_impl": TOYBASE_IMPL})
    make_plugin_dist("refiners-glow", GLOW_PLUGIN, extra_modules={"glow_impl": GLOW_IMPL})


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "refiners_core.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


def error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


def test_listed_by_refiners_plugins(third_party: None) -> None:
    result = cli("plugins")
    assert result.returncode == 0, result.stderr
    assert "refiners-toybase" in result.stdout and "refiners-glow" in result.stdout
    assert "adapter families: glow" in result.stdout and "base models: toy" in result.stdout
    helped = cli("generate", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "--glow / --glow-adapter NAME:IMAGE[:SCALE] (reference-image)" in helped.stdout


def test_from_python(third_party: None, tmp_path: Path) -> None:
    base = tmp_path / "base.toy"
    base.write_text('{"seed": 3}')
    pipeline = load_base_model(str(base), palette=0.9)
    assert isinstance(pipeline, rc.Pipeline) and pipeline.architecture == "toy" and pipeline.palette == 0.9
    bare = pipeline.generate("a lamp", steps=2)
    weights = tmp_path / "warm.glow.safetensors"
    from safetensors.torch import save_file

    save_file({"gain": torch.tensor(3.0)}, str(weights))
    glow = load_adapter(pipeline, str(weights), scale=0.5)  # the family comes from glow's detect
    assert isinstance(glow, rc.ImageAdapter)
    glow.set_image(Image.new("RGB", (5, 5), "white"))
    assert pipeline.generate("a lamp", steps=2).tobytes() != bare.tobytes()
    glow.scale = 0.0
    assert pipeline.generate("a lamp", steps=2).tobytes() == bare.tobytes()
    glow.remove()
    assert pipeline.generate("a lamp", steps=2).tobytes() == bare.tobytes()
    lora = tmp_path / "x.safetensors"
    save_file({"lora_unet_a.lora_down.weight": torch.zeros(1, 3)}, str(lora))
    with pytest.raises(ResolutionError, match="the lora family supports sd15, sdxl, not toy"):
        load_adapter(pipeline, str(lora), family="lora")


def test_demo_assets_and_generate(third_party: None, tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    written = cli("demo-assets", str(demo), "--architecture", "toy")
    assert written.returncode == 0, written.stderr
    lines = dict(line.partition("=")[::2] for line in written.stdout.splitlines())
    # the in-tree families' demos need an SD UNet: they do not support toy and are skipped, glow is written
    assert lines == {
        "base": str(demo / "base.toy"),
        "glow": str(demo / "style.glow.safetensors"),
        "glow.image": str(demo / "glow.png"),
    }
    outputs = []
    for option in (["--adapter", f"glow:{lines['glow']}:{lines['glow.image']}:0.7"],
                   ["--glow-adapter", f"{lines['glow']}:{lines['glow.image']}:0.7"],
                   []):  # fmt: skip
        output = tmp_path / f"out{len(outputs)}.png"
        result = cli("generate", "a lamp", "--base", lines["base"], *option, "--steps", "2", "-o", str(output))
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[-1] == str(output) and "2/2" in result.stderr
        with Image.open(output) as image:
            assert image.size == (16, 16)
            outputs.append(image.tobytes())
    assert outputs[0] == outputs[1] != outputs[2]

    missing = cli("generate", "a lamp", "--base", lines["base"], "--glow", lines["glow"], "-o", str(tmp_path / "x.png"))
    assert missing.returncode == 1 and "needs a reference-image" in error_line(missing.stderr)
    lora = cli("generate", "x", "--base", lines["base"], "--lora", lines["glow"], "-o", str(tmp_path / "x.png"))
    assert lora.returncode == 1 and "supports sd15, sdxl, not toy" in error_line(lora.stderr)
