"""What ``refiners generate`` does once its options are parsed: resolve the base model and the adapters
(local paths, or catalog names through refiners-registry), inject the adapters, generate, write the PNG.

Imports torch; the command module imports this one only when the command runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from refiners_core import RefinersError, image_to_tensor
from refiners_sd.cli.specs import AdapterSpec
from refiners_sd.clip.loading import text_encoder_module_map
from refiners_sd.pipeline import LatentDiffusion, StableDiffusion1, StableDiffusionXL, load_pipeline, read_layout
from refiners_sd.pipeline.guidance import uses_guidance

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["GenerateError", "GenerateRequest", "apply_adapters", "remove_adapters", "resolve_base", "run"]

Report = Callable[[str], None]
BASE_MODEL_FAMILY = "base-model"
KNOWN_BASES = ("sd15", "sdxl")
CONDITIONED_FAMILIES = ("controlnet", "t2i")


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
    steps: int = 30
    guidance: float = 7.5
    seed: int = 0
    width: int | None = None
    height: int | None = None
    solver: str = "ddim"
    device: str | None = None
    dtype: str | None = None
    image_encoder: str | None = None


def _registry(report: Report) -> Any:
    try:
        from refiners_registry import Registry
    except ImportError:
        raise GenerateError("catalog names need refiners-registry: pip install refiners-registry") from None
    registry = Registry()
    registry.report = report
    return registry


def resolve_base(base: str, report: Report, registry: Any = None) -> tuple[Path, str]:
    """The local pipeline folder of ``base`` and its base-model name (``sd15``/``sdxl``).

    ``base`` is a local diffusers pipeline folder or the catalog name of a base-model bundle (an entry of
    family ``base-model`` whose files form a pipeline folder), pulled and sha256-checked on demand.
    """
    local = Path(base).expanduser()
    if local.is_dir():
        return local, read_layout(local).topology
    if base.startswith((".", "/", "~")):
        raise GenerateError(f"--base {base}: no such folder")
    registry = registry or _registry(report)
    from refiners_registry import UnknownEntryError

    try:
        entry = registry.get(base)
    except UnknownEntryError as error:
        if base in KNOWN_BASES:
            raise GenerateError(
                f"the catalog has no '{base}' base-model bundle (its tokenizer and config files are not pinned yet): "
                "pass a local diffusers pipeline folder as --base, or add a bundle to a user catalog"
            ) from error
        raise GenerateError(f"--base {base}: not a local folder, and {error}") from error
    if entry.family != BASE_MODEL_FAMILY:
        raise GenerateError(f"--base {base}: {base} is a {entry.family!r} adapter, not a base model")
    if len(entry.source.files) < 2:
        raise GenerateError(
            f"--base {base}: {base} is a single base-model component; --base needs a pipeline bundle or folder"
        )
    folder = registry.pull(base)
    topology = read_layout(folder).topology
    if topology != entry.base_model:
        raise GenerateError(f"--base {base}: the catalog says {entry.base_model}, but the files are {topology}")
    return folder, entry.base_model


def load_image(path: Path, size: tuple[int, int] | None = None, mode: str = "RGB") -> Image.Image:
    """Open ``path`` as a ``mode`` image, resized to ``size`` (width, height) when given; names the file on error."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            image = opened.convert(mode)
    except FileNotFoundError:
        raise GenerateError(f"cannot read image {path}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise GenerateError(f"cannot read image {path}: not an image Pillow can decode ({error})") from None
    if size is not None and image.size != size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    return image


def image_to_condition(image: Image.Image, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A PIL image -> ``[1, C, H, W]`` in ``[0, 1]`` (C = 3 for RGB, 1 for grayscale)."""
    return image_to_tensor(image, device=device, dtype=dtype)


def _lora_components(model: LatentDiffusion) -> dict[str, dict[str, torch.nn.Module]]:
    """Text encoders under transformers module names, so that LoRAs patching them find their layers."""

    def names(encoder: Any) -> dict[str, torch.nn.Module]:
        mapping = text_encoder_module_map(encoder)
        return {(key if key == "text_projection" else f"text_model.{key}"): layer for key, layer in mapping.items()}

    if isinstance(model, StableDiffusionXL):
        encoder = model.text_encoder
        return {"text_encoder": names(encoder.text_encoder_l), "text_encoder_2": names(encoder.text_encoder_g)}
    assert isinstance(model, StableDiffusion1)
    return {"text_encoder": names(model.text_encoder)}


def _condition_mode(adapter: Any) -> str:
    config = getattr(adapter, "config", None)
    channels = getattr(config, "in_channels", None) or getattr(config, "conditioning_channels", None)
    return "L" if channels == 1 else "RGB"


class AdapterLoader:
    """Loads each :class:`AdapterSpec` into a model, checking families, base models and images first."""

    def __init__(self, model: LatentDiffusion, base_model: str, report: Report) -> None:
        self.model = model
        self.base_model = base_model
        self.report = report
        self._registry: Any = None

    def _load_local(self, spec: AdapterSpec, path: Path, **options: Any) -> Any:
        from refiners_core.plugins import adapter_families

        families = adapter_families()
        family = families.get(spec.family)
        if family is None:
            installed = ", ".join(sorted(families)) or "none"
            raise GenerateError(
                f"{spec.option} {spec.name}: no installed plugin provides the adapter family {spec.family!r} "
                f"(installed: {installed})"
            )
        return family.load_loader()(self.model.unet, path, **options)

    def _load_catalog(self, spec: AdapterSpec, **options: Any) -> Any:
        from refiners_registry import UnknownEntryError, load_adapter

        self._registry = self._registry or _registry(self.report)
        try:
            entry = self._registry.get(spec.name)
        except UnknownEntryError as error:
            raise GenerateError(f"{spec.option} {spec.name}: not a local file, and {error}") from error
        if entry.base_model != self.base_model:
            raise GenerateError(
                f"{spec.option} {spec.name}: this adapter is for {entry.base_model}, but the base model is "
                f"{self.base_model}"
            )
        return load_adapter(self.model.unet, spec.name, family=spec.family, registry=self._registry, **options)

    def load(self, spec: AdapterSpec, **options: Any) -> Any:
        """Inject the adapter of ``spec`` into the model's UNet and return it."""
        local = spec.local_path
        return self._load_local(spec, local, **options) if local else self._load_catalog(spec, **options)


def _require_image_encoder(specs: Sequence[AdapterSpec], image_encoder: str | None) -> None:
    if image_encoder is not None and not any(spec.family == "ip-adapter" for spec in specs):
        raise GenerateError(f"--image-encoder {image_encoder}: only an --ip-adapter uses it, and none was given")
    for spec in specs:
        if spec.family == "ip-adapter" and image_encoder is None:
            raise GenerateError(
                f"{spec.option} {spec.name}: an IP-Adapter needs --image-encoder (the CLIP vision model it was "
                "trained with: a transformers folder or a catalog name)"
            )


def apply_adapters(
    model: LatentDiffusion,
    base_model: str,
    specs: Sequence[AdapterSpec],
    size: tuple[int, int],
    guidance: float,
    report: Report,
    image_encoder: str | None = None,
) -> list[Any]:
    """Load every adapter (images first, so that a bad image fails before any download) and set its inputs.

    Condition images (ControlNet, T2I-Adapter) are resized to ``size`` and converted to the adapter's channels;
    IP-Adapter reference images go to the CLIP image encoder ``image_encoder`` (a transformers folder or a
    catalog name) as they are. Under classifier-free guidance (``guidance > 1``) the IP-Adapter embedding is
    the batch ``[negative, positive]`` of the prompt; conditions of batch 1 serve both halves. Returns the
    adapters in the order of ``specs`` (see :func:`remove_adapters`).
    """
    _require_image_encoder(specs, image_encoder)
    images = {
        index: load_image(spec.image, size if spec.family in CONDITIONED_FAMILIES else None)
        for index, spec in enumerate(specs)
        if spec.image is not None
    }
    loader = AdapterLoader(model, base_model, report)
    device, dtype = model.device, model.dtype
    adapters = []
    for index, spec in enumerate(specs):
        report(f"loading {spec.family} {spec.name} (scale {spec.scale:g})")
        if spec.family == "lora":
            adapter = loader.load(spec, scale=spec.scale, components=_lora_components(model))
        elif spec.family == "ip-adapter":
            encoder = _image_encoder_path(image_encoder, report) if image_encoder else None
            adapter = loader.load(spec, scale=spec.scale, image_encoder=encoder)
            embedding = adapter.compute_image_embedding(
                [images[index]], classifier_free_guidance=uses_guidance(guidance)
            )
            adapter.set_image_embedding(embedding)
        else:
            adapter = loader.load(spec, scale=spec.scale)
            image = images[index]
            if _condition_mode(adapter) != image.mode:
                image = image.convert(_condition_mode(adapter))
            try:
                adapter.set_condition(image_to_condition(image, device, dtype))
            except ValueError as error:
                raise GenerateError(f"{spec.option} {spec.name} with image {spec.image}: {error}") from None
        adapters.append(adapter)
    return adapters


def remove_adapters(adapters: Sequence[Any]) -> None:
    """Take out of the model every adapter :func:`apply_adapters` returned, last first: the UNet and text
    encoders get their exact original layers back (LoRAs through their manager, the others by ``eject``)."""
    for adapter in reversed(adapters):
        if hasattr(adapter, "remove_all"):  # a LoraManager: one per model, shared by every --lora
            if adapter.names:
                adapter.remove_all()
        elif adapter.is_injected:
            adapter.eject()


def _image_encoder_path(name: str, report: Report) -> Path:
    local = Path(name).expanduser()
    if local.exists():
        return local
    path = _registry(report).pull(name)
    return path.parent if path.is_file() else path


def _torch_dtype(name: str | None, device: str) -> torch.dtype:
    if name is None:
        return torch.float16 if device.startswith("cuda") else torch.float32
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in dtypes:
        raise GenerateError(f"--dtype {name}: expected one of {', '.join(dtypes)}")
    return dtypes[name]


def run(request: GenerateRequest, report: Report, on_step: Callable[[int, int], None] | None = None) -> Path:
    """Generate the image of ``request`` and write it as a PNG; returns its path."""
    device = request.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = _torch_dtype(request.dtype, device)
    if request.output.suffix.lower() != ".png":
        raise GenerateError(f"-o {request.output}: the output is a PNG file, name it *.png")
    _require_image_encoder(request.adapters, request.image_encoder)
    folder, base_model = resolve_base(request.base, report)
    report(f"loading {base_model} base model from {folder} ({device}, {str(dtype).removeprefix('torch.')})")
    model = load_pipeline(folder, device=device, dtype=dtype, solver=request.solver)
    width = request.width or model.default_size
    height = request.height or model.default_size
    factor = model.vae_scale_factor
    if width % factor or height % factor:
        raise GenerateError(f"--width/--height must be multiples of {factor}, got {width}x{height}")
    size = (width, height)
    apply_adapters(model, base_model, request.adapters, size, request.guidance, report, request.image_encoder)
    image = model.generate(
        request.prompt,
        negative_prompt=request.negative_prompt,
        steps=request.steps,
        guidance=request.guidance,
        seed=request.seed,
        width=width,
        height=height,
        callback=on_step,
    )
    request.output.parent.mkdir(parents=True, exist_ok=True)
    image.save(request.output, format="PNG")
    return request.output
