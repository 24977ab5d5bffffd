"""From what a user types to loaded models, through the hooks only: base models and adapters by name or path.

``load_base_model("sdxl")`` or ``load_base_model("~/models/my.safetensors")`` and
``load_adapter(pipeline, "sd15/lora-x")`` never name a base model or a family: local paths are recognised by
each base-model family's ``detect``, other names go to the plugins' :class:`NameResolver` (the registry's
catalog), and loading goes through the ``loader`` of the family that owns the files.

Importing this module never imports torch (the loaders do, when called).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from refiners_core.errors import RefinersError
from refiners_core.plugins.descriptors import AdapterFamily, BaseModelFamily, Resolved, import_object
from refiners_core.plugins.manager import adapter_families, base_model_families, name_resolvers

__all__ = [
    "BASE_MODEL_FAMILY",
    "ResolutionError",
    "detect_adapter_family",
    "detect_base_model",
    "find_adapter_family",
    "find_base_model_family",
    "load_adapter",
    "load_base_model",
    "resolve_name",
]

BASE_MODEL_FAMILY = "base-model"
"""The family name catalogs use for base-model files (``Resolved.family``)."""

Report = Callable[[str], None]


class ResolutionError(RefinersError):
    """A name or path that no installed plugin can turn into a base model or an adapter."""


def _installed(names: Any) -> str:
    return ", ".join(sorted(names)) or "none"


def find_adapter_family(name: str) -> AdapterFamily:
    """The installed adapter family called ``name`` (or with that alias).

    Raises:
        ResolutionError: no installed plugin provides it (the message lists those installed).
    """
    families = adapter_families()
    family = families.get(name)
    if family is None:
        raise ResolutionError(
            f"no installed plugin provides the adapter family {name!r} (installed: {_installed(families)})"
        )
    return family


def find_base_model_family(name: str) -> BaseModelFamily:
    """The installed base-model family (architecture) called ``name``.

    Raises:
        ResolutionError: no installed plugin provides it.
    """
    families = base_model_families()
    family = families.get(name)
    if family is None:
        raise ResolutionError(
            f"no installed plugin provides the base model {name!r} (installed: {_installed(families)})"
        )
    return family


def _detected(descriptors: list[Any], path: Path) -> list[Any]:
    found = []
    for descriptor in descriptors:
        if descriptor.detect is not None and import_object(descriptor.detect)(path):
            found.append(descriptor)
    return found


def detect_base_model(path: Path) -> BaseModelFamily:
    """The base-model family whose ``detect`` recognises the local folder or file ``path``.

    Raises:
        ResolutionError: none (or several) recognise it.
    """
    found = _detected(list(base_model_families().values()), path)
    if len(found) != 1:
        what = "no installed base-model plugin recognises it" if not found else "several plugins claim it"
        names = ", ".join(family.name for family in found)
        raise ResolutionError(f"{path}: {what}" + (f" ({names})" if names else ""))
    return found[0]


def detect_adapter_family(path: Path) -> AdapterFamily:
    """The adapter family whose ``detect`` recognises the local file or folder ``path``.

    Raises:
        ResolutionError: none, or several, recognise it (then ``family=`` must be given).
    """
    unique = {family.name: family for family in adapter_families().values()}
    found = _detected(list(unique.values()), path)
    if len(found) != 1:
        names = ", ".join(family.name for family in found)
        what = f"several families recognise it ({names})" if found else "no installed family recognises it"
        raise ResolutionError(f"{path}: {what}; name the family")
    return found[0]


def _is_path_like(text: str) -> bool:
    return text.startswith((".", "/", "~")) or "\\" in text


def resolve_name(
    name: str, *, report: Report | None = None, allow_pickle: bool = False, base_model: str | None = None
) -> Resolved:
    """A local path, or the local files of ``name`` as the first :class:`NameResolver` that knows it returns.

    A local path comes back with an empty ``family`` (the caller detects it). ``allow_pickle`` is the user's
    opt-in for pickled files, passed to resolvers (which refuse them otherwise). ``base_model`` is the
    architecture the caller will use the files with: a resolver refuses a name made for another one before it
    downloads anything.

    Raises:
        ResolutionError: not a local path, and no resolver knows the name.
    """
    local = Path(name).expanduser()
    if local.exists():
        return Resolved(path=local, family="")
    if _is_path_like(name):
        raise ResolutionError(f"{name}: no such file or folder")
    resolvers = name_resolvers()
    for resolver in resolvers:
        resolved = resolver.load_resolver()(name, report=report, allow_pickle=allow_pickle, base_model=base_model)
        if resolved is not None:
            return resolved
    if not resolvers:
        raise ResolutionError(
            f"{name}: not a local file or folder, and no installed plugin resolves names "
            "(pip install refiners-registry for catalog names)"
        )
    raise ResolutionError(f"{name}: not a local file or folder, nor a name any resolver knows")


def load_base_model(
    source: str | Path,
    *,
    device: Any = None,
    dtype: Any = None,
    report: Report | None = None,
    **options: Any,
) -> Any:
    """Load the base model at ``source`` (a local folder or file, or a name a resolver knows) as a pipeline.

    The pipeline follows :class:`refiners_core.contracts.Pipeline`. ``options`` go to the family's loader
    (see its ``options``).

    Raises:
        ResolutionError: unknown name, unrecognised files, or a name that is an adapter, not a base model.
    """
    if isinstance(source, Path):
        resolved = Resolved(path=source.expanduser(), family="")
        if not resolved.path.exists():
            raise ResolutionError(f"{source}: no such file or folder")
    else:
        resolved = resolve_name(source, report=report)
    if resolved.family and resolved.family != BASE_MODEL_FAMILY:
        raise ResolutionError(f"{source} is a {resolved.family!r} adapter, not a base model")
    if resolved.family and resolved.base_model:
        family = find_base_model_family(resolved.base_model)
    else:
        family = detect_base_model(resolved.path)
    return family.load_loader()(resolved.path, device=device, dtype=dtype, **options)


def load_adapter(
    target: Any,
    name_or_path: str | Path,
    *,
    family: str | None = None,
    scale: float = 1.0,
    report: Report | None = None,
    **options: Any,
) -> Any:
    """Load the adapter ``name_or_path`` (a local file or folder, or a name a resolver knows) into ``target``.

    ``target`` is a pipeline (:class:`refiners_core.contracts.Pipeline`) or a component of one. The family
    is ``family``, else the resolver's, else the one whose ``detect`` recognises the files. When ``target``
    has an ``architecture``, the family and the resolver's base model are checked against it first.
    Returns what the family loader returns (:class:`refiners_core.contracts.LoadedAdapter`).

    Raises:
        ResolutionError: unknown name or family, a family that does not support the architecture, or an
            adapter made for another base model.
    """
    allow_pickle = bool(options.pop("allow_pickle", False))
    if isinstance(name_or_path, Path):
        resolved = Resolved(path=name_or_path.expanduser(), family="")
        if not resolved.path.exists():
            raise ResolutionError(f"{name_or_path}: no such file or folder")
    else:
        architecture = getattr(target, "architecture", None)
        resolved = resolve_name(
            name_or_path,
            report=report,
            allow_pickle=allow_pickle,
            base_model=architecture if isinstance(architecture, str) else None,
        )
    if resolved.family == BASE_MODEL_FAMILY:
        raise ResolutionError(f"{name_or_path} is a base model, not an adapter")
    if family is not None:
        chosen = find_adapter_family(family)
        if resolved.family and find_adapter_family(resolved.family).name != chosen.name:
            raise ResolutionError(f"{name_or_path} is a {resolved.family!r} adapter, not {family!r}")
    elif resolved.family:
        chosen = find_adapter_family(resolved.family)
    else:
        chosen = detect_adapter_family(resolved.path)
    architecture = getattr(target, "architecture", None)
    if isinstance(architecture, str):
        if not chosen.supports(architecture):
            raise ResolutionError(
                f"{name_or_path}: the {chosen.name} family supports {', '.join(chosen.base_models)}, not {architecture}"
            )
        if resolved.base_model and resolved.base_model != architecture:
            raise ResolutionError(
                f"{name_or_path}: this adapter is for {resolved.base_model}, but the base model is {architecture}"
            )
    if allow_pickle and (resolved.allow_pickle or not resolved.family):  # a catalog entry must vouch too
        options["allow_pickle"] = True
    return chosen.load_loader()(target, resolved.path, scale=scale, **options)
