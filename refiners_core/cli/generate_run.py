"""What ``refiners generate`` does once its options are parsed, through the plugin hooks only: load the base
model (``refiners_core.load_base_model``), check every adapter's image and inputs against its family's
descriptor, load the adapters (``refiners_core.load_adapter``), generate, write the PNG.

Imports torch; the command module imports this one only when the command runs.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from refiners_core.cli.adapter_specs import AdapterSpec
from refiners_core.errors import RefinersError
from refiners_core.plugins.descriptors import TAKES_CONDITION_IMAGE, TAKES_NOTHING, AdapterFamily
from refiners_core.plugins.resolution import find_adapter_family, load_adapter, load_base_model, resolve_name

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "GenerateError",
    "GenerateRequest",
    "apply_adapters",
    "check_adapters",
    "check_request",
    "load_image",
    "run",
]

Report = Callable[[str], None]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class GenerateError(RefinersError):
    """A request ``refiners generate`` cannot fulfil (one line, shown as ``Error: ...``)."""

    exit_code = 1


@dataclass
class GenerateRequest:
    """Every option of one ``refiners generate`` call."""

    prompt: str
    base: str
    output: Path
    negative_prompt: str | None = None
    adapters: Sequence[AdapterSpec] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)
    base_inputs: dict[str, str] = field(default_factory=dict)
    steps: int = 30
    guidance: float = 7.5
    seed: int = 0
    width: int | None = None
    height: int | None = None
    solver: str | None = None
    device: str | None = None
    dtype: str | None = None


def _input_option(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def check_adapters(specs: Sequence[AdapterSpec], inputs: dict[str, str]) -> dict[int, AdapterFamily]:
    """Each spec's family, after checking images and inputs against the descriptors (before anything loads).

    Raises:
        GenerateError: an image a family does not take, a missing image, an input no family uses, or a missing one.
    """
    families = {index: find_adapter_family(spec.family) for index, spec in enumerate(specs)}
    for index, spec in enumerate(specs):
        family = families[index]
        if family.takes == TAKES_NOTHING and spec.image is not None:
            raise GenerateError(f"{spec.option} {spec.name}: the {family.name} family takes no image ({spec.image})")
        if family.takes != TAKES_NOTHING and spec.image is None:
            raise GenerateError(
                f"{spec.option} {spec.name}: the {family.name} family needs a {family.takes}: NAME:IMAGE[:SCALE]"
            )
        for name in family.inputs:
            if name not in inputs:
                raise GenerateError(
                    f"{spec.option} {spec.name}: the {family.name} family needs {_input_option(name)} "
                    f"(--input {name}=PATH_OR_NAME)"
                )
    used = {name for family in families.values() for name in family.inputs}
    for name, value in inputs.items():
        if name not in used:
            users = sorted({family.name for family in families.values() if name in family.inputs})
            hint = f"only {', '.join(users)} adapters use it" if users else "no adapter given uses it"
            raise GenerateError(f"{_input_option(name)} {value}: {hint}")
    return families


def load_image(path: Path, size: tuple[int, int] | None = None) -> Image.Image:
    """Open ``path`` as an RGB image, resized to ``size`` (width, height) when given; names the file on error."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except FileNotFoundError:
        raise GenerateError(f"cannot read image {path}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise GenerateError(f"cannot read image {path}: not an image Pillow can decode ({error})") from None
    if size is not None and image.size != size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    return image


def _input_path(value: str, report: Report) -> Path:
    """A family input (a model folder) from a local path or a name a resolver knows (a file's folder for files)."""
    resolved = resolve_name(value, report=report)
    if resolved.family and resolved.path.is_file():
        return resolved.path.parent
    return resolved.path


def apply_adapters(
    pipeline: Any,
    specs: Sequence[AdapterSpec],
    inputs: dict[str, str],
    size: tuple[int, int],
    report: Report,
) -> list[Any]:
    """Load every adapter into ``pipeline`` and give it its image; returns them in the order of ``specs``.

    Images are read first, so that a bad image fails before any download: condition images are resized to
    ``size`` (width, height), reference images are used as they are. Family inputs are resolved to local folders.
    """
    families = check_adapters(specs, inputs)
    images = {
        index: load_image(spec.image, size if families[index].takes == TAKES_CONDITION_IMAGE else None)
        for index, spec in enumerate(specs)
        if spec.image is not None
    }
    resolved_inputs: dict[str, Path] = {}
    adapters = []
    for index, spec in enumerate(specs):
        family = families[index]
        report(f"loading {family.name} {spec.name} (scale {spec.scale:g})")
        for name in family.inputs:
            if name not in resolved_inputs:
                resolved_inputs[name] = _input_path(inputs[name], report)
        options = {name: resolved_inputs[name] for name in family.inputs}
        adapter = load_adapter(pipeline, spec.name, family=family.name, scale=spec.scale, report=report, **options)
        if index in images:
            try:
                adapter.set_image(images[index])
            except ValueError as error:
                raise GenerateError(f"{spec.option} {spec.name} with image {spec.image}: {error}") from None
        adapters.append(adapter)
    return adapters


def _torch_dtype(name: str | None, device: str) -> torch.dtype:
    if name is None:
        return torch.float16 if device.startswith("cuda") else torch.float32
    if name not in DTYPES:
        raise GenerateError(f"--dtype {name}: expected one of {', '.join(DTYPES)}")
    return DTYPES[name]


def _device(name: str | None) -> str:
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(name)
    except (RuntimeError, ValueError):
        raise GenerateError(f"--device {name}: not a device name (cpu, cuda, cuda:1, mps...)") from None
    return name


def check_request(request: GenerateRequest) -> None:
    """Every option that can be checked before anything loads: output path, sizes, numbers, adapters.

    Raises:
        GenerateError: naming the option at fault.
    """
    output = request.output
    if output.suffix.lower() != ".png":
        raise GenerateError(f"-o {output}: the output is a PNG file, name it *.png")
    if output.is_dir():
        raise GenerateError(f"-o {output}: is a folder")
    parent = output.parent
    existing = next((folder for folder in (parent, *parent.parents) if folder.exists()), None)
    if existing is not None and not existing.is_dir():
        raise GenerateError(f"-o {output}: {existing} is a file, not a folder")
    if existing is not None and not os.access(existing, os.W_OK):
        raise GenerateError(f"-o {output}: {existing} is not writable")
    for option, value in (("--width", request.width), ("--height", request.height)):
        if value is not None and value <= 0:
            raise GenerateError(f"{option} {value}: must be a positive number of pixels")
    if request.steps < 1:
        raise GenerateError(f"--steps {request.steps}: must be at least 1")
    if not math.isfinite(request.guidance):
        raise GenerateError(f"--guidance {request.guidance}: must be a finite number")
    check_adapters(request.adapters, request.inputs)


def _write_png(image: Image.Image, output: Path) -> None:
    """Write ``image`` next to ``output`` first, then rename: an existing file is replaced whole or not at all."""
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            image.save(stream, format="PNG")
        os.replace(temporary, output)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def run(request: GenerateRequest, report: Report, on_step: Callable[[int, int], None] | None = None) -> Path:
    """Generate the image of ``request`` and write it as a PNG; returns its path.

    Every option is checked first (:func:`check_request`); the PNG is written to a temporary file then renamed,
    so a failed write leaves an existing file untouched.
    """
    check_request(request)
    device = _device(request.device)
    dtype = _torch_dtype(request.dtype, device)
    options: dict[str, Any] = {} if request.solver is None else {"solver": request.solver}
    for name, value in request.base_inputs.items():  # --vae ...: local paths or names a resolver knows
        options[name] = resolve_name(value, report=report).path
    report(f"loading base model {request.base} ({device}, {str(dtype).removeprefix('torch.')})")
    pipeline = load_base_model(request.base, device=device, dtype=dtype, report=report, **options)
    width = pipeline.default_size if request.width is None else request.width
    height = pipeline.default_size if request.height is None else request.height
    multiple = pipeline.size_multiple
    if width % multiple or height % multiple:
        raise GenerateError(f"--width/--height must be multiples of {multiple}, got {width}x{height}")
    apply_adapters(pipeline, request.adapters, request.inputs, (width, height), report)
    image = pipeline.generate(
        request.prompt,
        negative_prompt=request.negative_prompt,
        steps=request.steps,
        guidance=request.guidance,
        seed=request.seed,
        width=width,
        height=height,
        callback=on_step,
    )
    _write_png(image, request.output)
    return request.output
