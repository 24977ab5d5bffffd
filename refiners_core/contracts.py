"""The two contracts every plugin follows: what a base-model loader returns and what a family loader returns.

A base-model plugin (see :class:`refiners_core.BaseModelFamily`) turns a name, folder or file into an object
following :class:`Pipeline`; an adapter-family plugin (see :class:`refiners_core.AdapterFamily`) injects an
adapter into such a pipeline (or one of its components) and returns an object following
:class:`LoadedAdapter`, plus :class:`ImageAdapter` when the family takes an image at generation time.
Applications (``refiners generate``, training) use nothing else, so a third-party base model or family
works with them unchanged.

These are :class:`typing.Protocol` classes: plugins do not derive from them, they provide the members.
Importing this module never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = [
    "CONVENTION_DIFFUSERS",
    "CONVENTION_LDM",
    "CONVENTION_REFINERS",
    "CONVENTION_TRANSFORMERS",
    "ImageAdapter",
    "ImageInput",
    "LoadedAdapter",
    "Pipeline",
    "StepCallback",
    "component_of",
    "TrainableAdapter",
    "TrainablePipeline",
]

ImageInput: TypeAlias = "Image.Image | torch.Tensor"
"""An image given to an adapter: a PIL image, or a ``[B, C, H, W]`` (or ``[C, H, W]``) tensor in ``[0, 1]``."""

StepCallback: TypeAlias = Callable[[int, int], None]
"""Called after each denoising step as ``callback(steps_done, total_steps)``."""

CONVENTION_REFINERS = "refiners"
"""Module names as the Chain tree itself has them (``Chain.layer(path)`` paths)."""
CONVENTION_DIFFUSERS = "diffusers"
"""Module names of the diffusers model class (``down_blocks.0.attentions.0...``)."""
CONVENTION_LDM = "ldm"
"""Module names of the original LDM / single-file checkpoints (``input_blocks.1.1...``), used by kohya files."""
CONVENTION_TRANSFORMERS = "transformers"
"""Module names of the transformers model class (``text_model.encoder.layers.0...``)."""


@runtime_checkable
class LoadedAdapter(Protocol):
    """What every family loader returns: one adapter, already injected.

    ``scale`` reads and sets its strength (0 disables it, for most families exactly); ``remove()`` ejects it,
    giving the model back exactly as it was before the load (same objects, same keys, same outputs).
    """

    @property
    def scale(self) -> float:
        """The adapter's strength."""
        ...

    @scale.setter
    def scale(self, value: float) -> None: ...

    def remove(self) -> None:
        """Eject the adapter from the model it was loaded into."""
        ...


@runtime_checkable
class ImageAdapter(LoadedAdapter, Protocol):
    """A loaded adapter that takes an image at generation time (a condition or a reference image)."""

    def set_image(self, image: ImageInput) -> None:
        """Use ``image`` (PIL, or a ``[B, C, H, W]`` tensor in ``[0, 1]``) for the next generations."""
        ...


@runtime_checkable
class Pipeline(Protocol):
    """What a base-model loader returns: a text-to-image model made of named components.

    Attributes:
        architecture: the base-model family name (``sd15``, ``sdxl``, or a third party's), which adapter
            families and catalog entries are checked against.
        default_size: the side in pixels ``generate`` uses when no width or height is given.
        size_multiple: width and height must be multiples of it.
    """

    @property
    def architecture(self) -> str:
        """The base-model family name of this pipeline."""
        ...

    @property
    def default_size(self) -> int:
        """The default image side in pixels."""
        ...

    @property
    def size_multiple(self) -> int:
        """Width and height must be multiples of this."""
        ...

    @property
    def device(self) -> torch.device:
        """Where the denoising model's weights are."""
        ...

    @property
    def dtype(self) -> torch.dtype:
        """The denoising model's weight dtype."""
        ...

    def components(self) -> Mapping[str, torch.nn.Module]:
        """The named components adapters target: ``unet``, ``text_encoder``, ``text_encoder_2``, ``vae``..."""
        ...

    def module_names(self, component: str, convention: str) -> Mapping[str, torch.nn.Module]:
        """``{module name in convention: layer}`` for a component (e.g. ``("unet", "ldm")``).

        Raises:
            RefinersError: the pipeline has no such component, or does not know that convention for it
                (the message lists what it knows).
        """
        ...

    def conventions(self, component: str) -> tuple[str, ...]:
        """The naming conventions :meth:`module_names` knows for ``component``."""
        ...

    def generate(
        self,
        prompt: str,
        *,
        negative_prompt: str | None = None,
        steps: int = 30,
        guidance: float = 7.5,
        seed: int = 0,
        width: int | None = None,
        height: int | None = None,
        callback: StepCallback | None = None,
    ) -> Image.Image:
        """Generate one image with every adapter currently loaded."""
        ...


def component_of(target: Any, name: str) -> Any:
    """The component ``name`` of ``target`` when it is a pipeline (has ``components()``), else ``target`` itself.

    Family loaders call it so that they accept a whole pipeline or the bare component they patch.

    Raises:
        RefinersError: a pipeline without that component (the message lists its components).
    """
    components = getattr(target, "components", None)
    if not callable(components):
        return target
    found = components()
    if name not in found:
        from refiners_core.errors import RefinersError

        raise RefinersError(f"this pipeline has no {name!r} component (it has: {', '.join(found)})")
    return found[name]


@runtime_checkable
class TrainablePipeline(Pipeline, Protocol):
    """A pipeline an application can train adapters on (``refiners train``): the pieces of one diffusion
    training step, with the base model's own conventions (latent scaling, text conditioning, noise schedule,
    prediction target) kept inside the base-model plugin.

    A step is ``latents = encode_images(x)``, ``conditioning = encode_prompts(captions)``, then
    ``training_loss(latents, conditioning, noise, timesteps)``; the caller draws ``noise`` (shaped like the
    latents) and integer ``timesteps`` in ``[0, num_train_timesteps)`` so that it controls every random number.
    """

    @property
    def num_train_timesteps(self) -> int:
        """How many timesteps the noise schedule has (1000 for Stable Diffusion)."""
        ...

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` with values in ``[0, 1]`` -> latents (deterministic: the posterior mean)."""
        ...

    def encode_prompts(self, prompts: list[str]) -> object:
        """Text conditioning for a batch of prompts (an opaque object ``training_loss`` takes).

        Runs with gradients enabled, so that adapters injected in the text encoders learn.
        """
        ...

    def training_loss(
        self, latents: torch.Tensor, conditioning: object, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """The per-sample loss ``[B]`` of denoising ``latents`` noised with ``noise`` at ``timesteps``."""
        ...


@runtime_checkable
class TrainableAdapter(LoadedAdapter, Protocol):
    """A fresh adapter made for training by a family's ``create`` (see
    :attr:`refiners_core.AdapterFamily.create`): injected, with trainable parameters, and savable in the
    family's file formats so that its loader (and other tools) read it back.
    """

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        """The parameters training updates."""
        ...

    def save(self, path: str | Path, *, format: str | None = None, metadata: Mapping[str, str] | None = None) -> Path:
        """Write the adapter to ``path`` in ``format`` (the family's default when ``None``), with ``metadata``
        added to the file's header."""
        ...
