"""The ``refiners generate`` and ``refiners demo-assets`` commands.

Importing this module needs typer only; torch, the models and the registry load when a command runs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from refiners_sd.cli.specs import AdapterSpec, SpecError, parse_conditioned, parse_scaled

__all__ = ["demo_assets", "generate", "register"]

SOLVER_NAMES = ("ddim", "euler", "dpm++2m")


def _echo_err(message: str) -> None:
    typer.echo(message, err=True)


def _fail(error: BaseException) -> typer.Exit:
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(code=int(getattr(error, "exit_code", 1)))


def _specs(loras: list[str], controlnets: list[str], t2is: list[str], ip_adapters: list[str]) -> list[AdapterSpec]:
    specs = [parse_scaled("lora", text) for text in loras]
    specs += [parse_conditioned("controlnet", text) for text in controlnets]
    specs += [parse_conditioned("t2i", text) for text in t2is]
    specs += [parse_conditioned("ip-adapter", text) for text in ip_adapters]
    return specs


@contextmanager
def _step_progress(total: int) -> Iterator[Callable[[int, int], None]]:
    """A progress bar of denoising steps on stderr (rich), yielding the step callback.

    The bar appears at the first finished step, so an error while loading is not preceded by an empty bar.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("denoising"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    task: TaskID | None = None

    def on_step(done: int, steps: int) -> None:
        nonlocal task
        if task is None:
            progress.start()
            task = progress.add_task("denoising", total=steps or total)
        progress.update(task, completed=done, total=steps)

    try:
        yield on_step
    finally:
        if task is not None:
            progress.stop()


def generate(
    prompt: str = typer.Argument(..., help="What the image shows."),
    base: str = typer.Option(
        ..., "--base", help="Base model: a catalog bundle name (sd15, sdxl, ...) or a local diffusers pipeline folder."
    ),
    output: Path = typer.Option(Path("out.png"), "-o", "--output", help="PNG file to write."),
    lora: list[str] = typer.Option([], "--lora", help="NAME[:SCALE], repeatable: a catalog name or a local file."),
    controlnet: list[str] = typer.Option([], "--controlnet", help="NAME:IMAGE[:SCALE], repeatable."),
    t2i: list[str] = typer.Option([], "--t2i", help="NAME:IMAGE[:SCALE], repeatable (T2I-Adapter)."),
    ip_adapter: list[str] = typer.Option([], "--ip-adapter", help="NAME:IMAGE[:SCALE] (IP-Adapter reference image)."),
    image_encoder: str | None = typer.Option(
        None, "--image-encoder", help="CLIP image encoder for --ip-adapter: a transformers folder or a catalog name."
    ),
    negative_prompt: str | None = typer.Option(None, "--negative-prompt", help="What to steer away from."),
    steps: int = typer.Option(30, "--steps", min=1, help="Denoising steps."),
    guidance: float = typer.Option(7.5, "--guidance", help="Classifier-free guidance scale (1 disables it)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initial noise (drawn on the CPU: same on any device)."),
    width: int | None = typer.Option(None, "--width", help="Image width, a multiple of 8 (default: the model's)."),
    height: int | None = typer.Option(None, "--height", help="Image height, a multiple of 8 (default: the model's)."),
    solver: str = typer.Option("ddim", "--solver", help=f"One of: {', '.join(SOLVER_NAMES)}."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1, mps... (default: cuda if present)."),
    dtype: str | None = typer.Option(
        None, "--dtype", help="float32, float16 or bfloat16 (default: float16 on CUDA, float32 elsewhere)."
    ),
) -> None:
    """Generate an image from a base model with any stack of adapters; prints the PNG's path last."""
    if solver not in SOLVER_NAMES:
        raise typer.BadParameter(f"expected one of: {', '.join(SOLVER_NAMES)}", param_hint="--solver")
    try:
        specs = _specs(lora, controlnet, t2i, ip_adapter)
    except SpecError as error:
        raise typer.BadParameter(str(error)) from None
    try:
        from refiners_core import RefinersError
        from refiners_sd.cli.runner import GenerateRequest, run

        request = GenerateRequest(
            prompt=prompt,
            base=base,
            output=output,
            negative_prompt=negative_prompt,
            adapters=specs,
            steps=steps,
            guidance=guidance,
            seed=seed,
            width=width,
            height=height,
            solver=solver,
            device=device,
            dtype=dtype,
            image_encoder=image_encoder,
        )
        with _step_progress(steps) as on_step:
            path = run(request, report=_echo_err, on_step=on_step)
    except (RefinersError, ValueError, OSError) as error:
        raise _fail(error) from None
    sys.stderr.flush()
    typer.echo(str(path))


def demo_assets(
    folder: Path = typer.Argument(..., help="Where to write the assets (created if needed)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights."),
) -> None:
    """Write a tiny SD1.5-topology base model, a LoRA, a ControlNet, a T2I-Adapter, an IP-Adapter and its image
    encoder, a condition image and a reference image (no download needed; adapters of missing plugins are skipped).
    """
    from dataclasses import fields

    from refiners_sd.demo import build_demo_assets

    assets = build_demo_assets(folder, seed=seed)
    for item in fields(assets):
        path = getattr(assets, item.name)
        if path is not None:
            typer.echo(f"{item.name}={path}")


def register(cli: typer.Typer) -> None:
    """Add ``generate`` and ``demo-assets`` to the ``refiners`` app."""
    cli.command("generate")(generate)
    cli.command("demo-assets")(demo_assets)
