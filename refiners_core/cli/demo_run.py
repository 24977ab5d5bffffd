"""What ``refiners demo-assets`` does: the base-model family's demo writer, then every installed adapter family's
``demo`` hook on the loaded demo pipeline. Imports torch (through the loaders)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from refiners_core.errors import RefinersError
from refiners_core.plugins import adapter_families, base_model_families
from refiners_core.plugins.descriptors import BaseModelFamily, DemoAsset, import_object

__all__ = ["choose_demo_base", "write_demo_assets"]


def choose_demo_base(architecture: str | None) -> BaseModelFamily:
    """The base-model family whose demo is written: ``architecture``, else the first installed one with a demo.

    Raises:
        RefinersError: no such family, or it (or every family) has no demo writer.
    """
    families = base_model_families()
    if architecture is not None:
        family = families.get(architecture)
        if family is None or family.demo is None:
            with_demo = ", ".join(name for name, item in families.items() if item.demo) or "none"
            raise RefinersError(
                f"--architecture {architecture}: no installed base model with a demo (have: {with_demo})"
            )
        return family
    for family in families.values():
        if family.demo is not None:
            return family
    raise RefinersError("no installed base-model plugin has a demo writer (pip install refiners-sd)")


def write_demo_assets(
    folder: Path,
    *,
    seed: int = 0,
    architecture: str | None = None,
    emit: Callable[[str], None] = print,
    warn: Callable[[str], None] = print,
) -> list[str]:
    """Write the demo base model under ``folder`` and each adapter family's demo; ``emit`` gets ``NAME=PATH`` lines.

    Returns the names of the families whose demo failed (each reported through ``warn``, never hidden).
    """
    import torch

    base_family = choose_demo_base(architecture)
    assert base_family.demo is not None
    folder.mkdir(parents=True, exist_ok=True)
    base = Path(import_object(base_family.demo)(folder, seed=seed))
    emit(f"base={base}")
    pipeline = base_family.load_loader()(base, device="cpu", dtype=torch.float32)
    failures: list[str] = []
    unique = {family.name: family for family in adapter_families().values()}
    for name, family in sorted(unique.items()):
        if family.demo is None or not family.supports(pipeline.architecture):
            continue
        try:
            asset: DemoAsset = import_object(family.demo)(folder, pipeline, seed=seed)
        except Exception as error:  # a plugin's bug: reported with its name, the other families still run
            warn(f"refiners: warning: the {name} family's demo failed: {type(error).__name__}: {error}")
            failures.append(name)
            continue
        emit(f"{name}={asset.path}")
        if asset.image is not None:
            emit(f"{name}.image={asset.image}")
        for input_name, path in asset.inputs.items():
            emit(f"{name}.{input_name}={path}")
    return failures
