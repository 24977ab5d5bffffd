"""Metadata that plugins return from their hooks. Importing this module never imports torch."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refiners_core.errors import PluginError

TAKES_NOTHING = "nothing"
"""An adapter family whose adapters need no input at generation time (LoRA)."""
TAKES_CONDITION_IMAGE = "condition-image"
"""An adapter family whose adapters take a spatial condition image, resized to the output (ControlNet, T2I)."""
TAKES_REFERENCE_IMAGE = "reference-image"
"""An adapter family whose adapters take a reference image, used as it is (IP-Adapter)."""


def import_object(reference: str) -> Any:
    """Import ``"package.module:attribute"`` and return the attribute.

    Raises:
        PluginError: when the reference is malformed, the module fails to import, or the attribute is missing.
    """
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise PluginError(f"invalid reference {reference!r}: expected 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise PluginError(f"cannot import {module_name!r} (from {reference!r}): {error}") from error
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as error:
            raise PluginError(f"{module_name!r} has no attribute {attribute!r} (from {reference!r})") from error
    return target


@dataclass(frozen=True)
class AdapterFamily:
    """An adapter family contributed by a plugin.

    Attributes:
        name: unique family name used by catalogs and ``--adapter FAMILY:...`` (``lora``, ``controlnet``, ...).
        description: one line for ``refiners plugins`` and ``refiners adapters info``.
        loader: ``"module:function"``; called as ``loader(target, weights, *, scale=1.0, **options)`` where
            ``target`` is a pipeline (see :class:`refiners_core.contracts.Pipeline`) or one of its components,
            ``weights`` a path or a state dict. It injects the adapter and returns an object following
            :class:`refiners_core.contracts.LoadedAdapter` (``scale``, ``remove()``, and ``set_image(image)``
            when ``takes`` is not ``"nothing"``).
        formats: weight layouts this family reads (``diffusers``, ``kohya``, ``peft``, ...).
        base_models: base-model architectures it supports (``sd15``, ``sdxl``); empty means any.
        aliases: other names catalogs may use for this family (``t2i-adapter`` for ``t2i``).
        takes: what an adapter of this family takes at generation time: ``"nothing"``, ``"condition-image"``
            (resized to the output size), ``"reference-image"`` (used as it is), or a new kind a plugin defines.
        inputs: names of extra models the loader needs, passed as keyword options resolved to local paths
            (``("image_encoder",)`` for IP-Adapter; ``refiners generate --input image_encoder=NAME``).
        demo: ``"module:function"`` writing tiny demo weights, called as ``demo(folder, pipeline, *, seed)``
            and returning a :class:`DemoAsset`; ``None`` when the family has none.
        detect: ``"module:function"`` called as ``detect(path) -> bool``: whether a local file or folder is
            an adapter of this family (cheap: headers and names only). Lets ``load_adapter`` work without
            ``family=`` when exactly one family recognises the file.
        create: ``"module:function"`` making a fresh adapter to train, called as
            ``create(pipeline, *, rank, alpha, components=("unet",), **options)`` with a
            :class:`refiners_core.contracts.TrainablePipeline`; it injects the adapter and returns an object
            following :class:`refiners_core.contracts.TrainableAdapter` (``parameters()``, ``scale``,
            ``remove()``, ``save(path, format=..., metadata=...)``). ``None``: the family cannot be trained
            from ``refiners train``.
    """

    name: str
    description: str
    loader: str
    formats: tuple[str, ...] = ()
    base_models: tuple[str, ...] = ()
    aliases: tuple[str, ...] = field(default=())
    takes: str = TAKES_NOTHING
    inputs: tuple[str, ...] = ()
    demo: str | None = None
    detect: str | None = None
    create: str | None = None

    def load_loader(self) -> Callable[..., Any]:
        """Import and return the loader function (imports torch and the family's modules)."""
        return import_object(self.loader)

    def load_create(self) -> Callable[..., Any]:
        """Import and return the ``create`` function.

        Raises:
            PluginError: the family has none (it cannot be trained).
        """
        if self.create is None:
            raise PluginError(f"the adapter family {self.name!r} cannot create adapters to train")
        return import_object(self.create)

    def supports(self, architecture: str) -> bool:
        """Whether adapters of this family can patch a base model of ``architecture``."""
        return not self.base_models or architecture in self.base_models


@dataclass(frozen=True)
class BaseModelFamily:
    """A base-model family (one architecture) contributed by a plugin (e.g. ``sd15``, ``sdxl``).

    Attributes:
        name: the architecture name, used by catalogs (``base_model = "sdxl"``) and adapter families.
        description: one line for listings.
        loader: ``"module:function"`` building a pipeline, called as
            ``loader(path, *, device=None, dtype=None, **options)`` with a local folder or file, and returning
            an object following :class:`refiners_core.contracts.Pipeline`.
        detect: ``"module:function"`` called as ``detect(path) -> bool``: whether a local folder or file holds a
            base model of this architecture (cheap: config files and headers only). ``None``: never detected,
            the family is only reached by name.
        demo: ``"module:function"`` writing a tiny random pipeline of this architecture, called as
            ``demo(folder, *, seed)`` and returning the path to pass as ``--base``; ``None`` when it has none.
        options: keyword options the loader accepts beyond device and dtype (e.g. ``("vae", "solver")``).
    """

    name: str
    description: str
    loader: str
    detect: str | None = None
    demo: str | None = None
    options: tuple[str, ...] = ()

    def load_loader(self) -> Callable[..., Any]:
        """Import and return the loader function."""
        return import_object(self.loader)


@dataclass(frozen=True)
class DemoAsset:
    """What a family's demo writer produced: ``--adapter FAMILY:PATH[:IMAGE]`` uses it.

    Attributes:
        family: the family name.
        path: the adapter weights (file or folder).
        image: the condition or reference image to pass with it, if the family takes one.
        inputs: extra models the loader needs (``{"image_encoder": folder}``).
    """

    family: str
    path: Path
    image: Path | None = None
    inputs: dict[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class Resolved:
    """A name turned into local files by a :class:`NameResolver`.

    Attributes:
        path: the local file or folder.
        family: the adapter family of the files, or ``"base-model"``.
        base_model: the architecture the files are for (``None`` when unknown).
        allow_pickle: whether the source vouches for pickled files (the caller must opt in too).
    """

    path: Path
    family: str
    base_model: str | None = None
    allow_pickle: bool = False


@dataclass(frozen=True)
class NameResolver:
    """Turns names that are not local paths into local files (the registry resolves catalog names).

    Attributes:
        name: the resolver's name, for messages.
        description: one line for listings.
        resolver: ``"module:function"`` called as ``resolve(name, *, report=None, allow_pickle=False)``; returns
            a :class:`Resolved`, or ``None`` when the name is not its to resolve. ``report`` takes one-line
            progress messages; ``allow_pickle`` is the user's opt-in for pickled files.
    """

    name: str
    description: str
    resolver: str

    def load_resolver(self) -> Callable[..., Resolved | None]:
        """Import and return the resolve function."""
        return import_object(self.resolver)  # type: ignore[no-any-return]
