"""The ``refiners generate`` and ``refiners demo-assets`` commands: any installed base model and adapter family,
reached through the plugin hooks (no base model or family is named here).

Importing this module needs typer only; torch and the models load when a command runs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand

__all__ = ["GenerateCommand", "demo_assets", "generate", "register"]

EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}


def _echo_err(message: str) -> None:
    typer.echo(message, err=True)


def _fail(error: BaseException) -> typer.Exit:
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(code=int(getattr(error, "exit_code", 1)))


def families_help() -> str:
    """The installed adapter families and their options, for ``refiners generate --help``."""
    from refiners_core.plugins import adapter_families

    families = {family.name: family for family in adapter_families().values()}
    if not families:
        return "Installed adapter families: none (pip install a family plugin: refiners-lora, ...)."
    lines = ["Installed adapter families (--adapter FAMILY:SPEC, or the option shown):"]
    for family in sorted(families.values(), key=lambda item: item.name):
        options = " / ".join(f"--{name}" for name in (family.name, *family.aliases))
        form = "NAME[:SCALE]" if family.takes == "nothing" else f"NAME:IMAGE[:SCALE] ({family.takes})"
        inputs = "".join(f", with --{name.replace('_', '-')} PATH_OR_NAME" for name in family.inputs)
        lines.append(f"{options} {form}{inputs}")
    return "\n\n".join(lines)


class GenerateCommand(TyperCommand):
    """``refiners generate``, whose help ends with the installed adapter families (read when the help is shown)."""

    @property  # type: ignore[override]
    def epilog(self) -> str:
        return families_help()

    @epilog.setter
    def epilog(self, value: str | None) -> None:
        pass  # computed when shown, from the installed plugins


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
    ctx: typer.Context,
    prompt: str | None = typer.Argument(None, help="What the image shows."),
    base: str = typer.Option(
        ..., "--base", help="Base model: a local folder or file, or a catalog name (any installed base-model plugin)."
    ),
    output: Path = typer.Option(Path("out.png"), "-o", "--output", help="PNG file to write."),
    adapter: list[str] = typer.Option(
        [], "--adapter", help="FAMILY:NAME_OR_PATH[:IMAGE][:SCALE], repeatable, any installed family."
    ),
    input_: list[str] = typer.Option(
        [], "--input", help="NAME=PATH_OR_NAME: a model an adapter family needs (e.g. image_encoder=...)."
    ),
    negative_prompt: str | None = typer.Option(None, "--negative-prompt", help="What to steer away from."),
    steps: int = typer.Option(30, "--steps", min=1, help="Denoising steps."),
    guidance: float = typer.Option(7.5, "--guidance", help="Classifier-free guidance scale (1 disables it)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initial noise (drawn on the CPU: same on any device)."),
    width: int | None = typer.Option(None, "--width", help="Image width (default: the model's)."),
    height: int | None = typer.Option(None, "--height", help="Image height (default: the model's)."),
    solver: str | None = typer.Option(
        None, "--solver", help="The base model's solver (refiners-sd: ddim, euler, dpm++2m)."
    ),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1, mps... (default: cuda if present)."),
    dtype: str | None = typer.Option(
        None, "--dtype", help="float32, float16 or bfloat16 (default: float16 on CUDA, float32 elsewhere)."
    ),
) -> None:
    """Generate an image from a base model with any stack of adapters; prints the PNG's path last.

    Every installed family also has its own option, --FAMILY NAME[:IMAGE][:SCALE] (--lora, --controlnet, ...),
    and every model a family needs its own, --NAME VALUE (--image-encoder ...): see the list below.
    """
    try:
        from refiners_core.cli.adapter_specs import parse_arguments
        from refiners_core.errors import RefinersError
        from refiners_core.plugins import adapter_families

        tokens = ([prompt] if prompt is not None else []) + list(ctx.args)
        arguments = parse_arguments(tokens, adapter, input_, adapter_families())
        from refiners_core.cli.generate_run import GenerateRequest, run

        request = GenerateRequest(
            prompt=arguments.prompt,
            base=base,
            output=output,
            negative_prompt=negative_prompt,
            adapters=arguments.adapters,
            inputs=arguments.inputs,
            steps=steps,
            guidance=guidance,
            seed=seed,
            width=width,
            height=height,
            solver=solver,
            device=device,
            dtype=dtype,
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
    architecture: str | None = typer.Option(
        None, "--architecture", help="The base model to write (default: the first installed one with a demo)."
    ),
) -> None:
    """Write a tiny random base model and every installed adapter family's demo weights (no download).

    Prints one NAME=PATH line per file: base=..., FAMILY=..., FAMILY.image=..., FAMILY.INPUT=...; a family whose
    demo fails is reported on stderr (exit code 1), the others are still written.
    """
    from refiners_core.errors import RefinersError

    try:
        from refiners_core.cli.demo_run import write_demo_assets

        failures = write_demo_assets(folder, seed=seed, architecture=architecture, emit=typer.echo, warn=_echo_err)
    except (RefinersError, ValueError, OSError) as error:
        raise _fail(error) from None
    if failures:
        raise typer.Exit(code=1)


def register(cli: typer.Typer) -> None:
    """Add ``generate`` and ``demo-assets`` to the ``refiners`` app."""
    settings: dict[str, Any] = dict(EXTRA_ARGS)
    cli.command("generate", cls=GenerateCommand, context_settings=settings)(generate)
    cli.command("demo-assets")(demo_assets)
