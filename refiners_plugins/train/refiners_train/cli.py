"""The ``refiners train`` command group (``refiners train lora``).

Importing this module needs typer only; torch and the models load when a command runs.
"""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["lora", "register"]

train_app = typer.Typer(help="Train adapters on a base model.", no_args_is_help=True)


@train_app.command("lora")
def lora(
    base: str = typer.Option(..., "--base", help="Base model: a folder, a single file, or a catalog name."),
    data: Path = typer.Option(
        ..., "--data", help="Images (png/jpg/webp) with same-stem .txt captions, or metadata.jsonl."
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Where the trained LoRA goes (.safetensors)."),
    steps: int = typer.Option(500, "--steps", help="Optimizer steps."),
    batch_size: int = typer.Option(1, "--batch-size", help="Samples per process and micro-batch."),
    gradient_accumulation: int = typer.Option(1, "--gradient-accumulation", help="Micro-batches per step."),
    lr: float = typer.Option(1e-4, "--lr", help="AdamW learning rate (constant)."),
    rank: int = typer.Option(4, "--rank", help="LoRA rank."),
    alpha: float | None = typer.Option(None, "--alpha", help="LoRA alpha (default: the rank)."),
    resolution: int | None = typer.Option(None, "--resolution", help="Training side in pixels (default: the model's)."),
    seed: int = typer.Option(0, "--seed", help="Fixes the batches, the noise, the timesteps and the LoRA's init."),
    mixed_precision: str = typer.Option("no", "--mixed-precision", help="no, fp16 or bf16."),
    text_encoder: bool = typer.Option(False, "--text-encoder", help="Also train LoRAs on the text encoder(s)."),
    format: str = typer.Option("kohya", "--format", help="kohya (ComfyUI, A1111) or diffusers."),
    save_every: int = typer.Option(0, "--save-every", help="Checkpoint every N steps (0: never)."),
    checkpoint_dir: Path | None = typer.Option(
        None, "--checkpoint-dir", help="Checkpoints, log.jsonl and samples (default: OUTPUT-checkpoints)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint."),
    validation_prompt: str | None = typer.Option(
        None, "--validation-prompt", help="Write a sample image for this prompt at each checkpoint."
    ),
    gradient_checkpointing: bool = typer.Option(
        False, "--gradient-checkpointing", help="Recompute activations in the backward pass (less memory)."
    ),
    cache_latents: bool = typer.Option(False, "--cache-latents", help="Encode each image once."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1..."),
    buckets: bool = typer.Option(False, "--buckets", help="Group images by aspect ratio instead of center-cropping."),
    num_processes: int = typer.Option(1, "--num-processes", help="Data-parallel processes to start."),
) -> None:
    """Train a LoRA on a folder of captioned images and write it as a kohya or diffusers file."""
    from refiners_core.errors import RefinersError

    try:
        from refiners_train.lora import LoraTrainingConfig, train_lora

        config = LoraTrainingConfig(
            base=base,
            data=data,
            output=output,
            steps=steps,
            batch_size=batch_size,
            gradient_accumulation=gradient_accumulation,
            lr=lr,
            rank=rank,
            alpha=alpha,
            resolution=resolution,
            seed=seed,
            mixed_precision=mixed_precision,
            text_encoder=text_encoder,
            format=format,
            save_every=save_every,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            validation_prompt=validation_prompt,
            gradient_checkpointing=gradient_checkpointing,
            cache_latents=cache_latents,
            device=device,
            buckets=buckets,
            num_processes=num_processes,
            progress=True,
        )
        train_lora(config)
    except RefinersError as error:
        typer.echo(f"Error: {_first_line(error)}", err=True)
        raise typer.Exit(code=1) from None
    except Exception as error:  # a child process's failure arrives as its traceback text
        if type(error).__name__ != "ProcessRaisedException":
            raise
        typer.echo(f"Error: {_last_line(error)}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(str(output))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _last_line(error: BaseException) -> str:
    """The message of the exception at the end of a child process's traceback (without its class name)."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    name, separator, message = lines[-1].partition(": ")
    return message if separator and name.replace(".", "").replace("_", "").isalnum() else lines[-1]


def register(cli: typer.Typer) -> None:
    """Add the ``train`` group to the ``refiners`` app."""
    cli.add_typer(train_app, name="train")
