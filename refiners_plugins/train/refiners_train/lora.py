"""``refiners train lora``: a LoRA trained on a folder of captioned images, through the plugin contracts only.

The base model comes from ``refiners_core.load_base_model`` (any base-model plugin whose pipeline follows
:class:`refiners_core.TrainablePipeline`), the LoRA from the ``lora`` family's ``create`` (see
:class:`refiners_core.AdapterFamily`), the steps from :class:`~refiners_train.trainer.Trainer`.
:func:`train_lora` runs in this process, in the group ``torchrun`` started, or starts ``num_processes``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from refiners_core.plugins.descriptors import import_object
from refiners_train.data import TrainingData, read_folder, tag_frequency
from refiners_train.distributed import ProcessGroup, join_group, leave_group, spawn
from refiners_train.errors import TrainError
from refiners_train.schedule import BatchPlan, sample_generator
from refiners_train.trainer import MIXED_PRECISION, Trainer, TrainingOptions

__all__ = ["BASE_MODEL_VERSIONS", "DiffusionObjective", "LoraTrainingConfig", "train_lora"]

BASE_MODEL_VERSIONS = {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0"}
"""kohya's ``ss_base_model_version`` for each architecture."""
FORMATS = ("kohya", "diffusers")


@dataclass
class LoraTrainingConfig:
    """Everything ``refiners train lora`` takes (see its ``--help``).

    ``base_loader`` names the function turning ``base`` into a pipeline (``"module:function"``, called as
    ``loader(base, device=..., dtype=...)``): the hooks' ``load_base_model`` unless a caller knows better.
    """

    base: str
    data: Path
    output: Path
    steps: int = 500
    batch_size: int = 1
    gradient_accumulation: int = 1
    lr: float = 1e-4
    rank: int = 4
    alpha: float | None = None
    resolution: int | None = None
    seed: int = 0
    mixed_precision: str = "no"
    text_encoder: bool = False
    format: str = "kohya"
    save_every: int = 0
    checkpoint_dir: Path | None = None
    resume: bool = False
    validation_prompt: str | None = None
    gradient_checkpointing: bool = False
    cache_latents: bool = False
    device: str = "cpu"
    buckets: bool = False
    num_processes: int = 1
    progress: bool = False
    base_loader: str = "refiners_core:load_base_model"
    extra_metadata: dict[str, str] = field(default_factory=dict)

    @property
    def checkpoints(self) -> Path:
        """The checkpoint folder (default: ``<output stem>-checkpoints`` next to the output)."""
        return self.checkpoint_dir or self.output.with_name(f"{self.output.stem}-checkpoints")


def check_config(config: LoraTrainingConfig) -> None:
    """Reject bad options with one message naming the option.

    Raises:
        TrainError: the first bad option found.
    """
    positive = {
        "--steps": config.steps,
        "--batch-size": config.batch_size,
        "--gradient-accumulation": config.gradient_accumulation,
        "--rank": config.rank,
        "--num-processes": config.num_processes,
    }
    for option, value in positive.items():
        if value < 1:
            raise TrainError(f"{option} must be at least 1, got {value}")
    if not math.isfinite(config.lr) or config.lr <= 0:
        raise TrainError(f"--lr must be a positive number, got {config.lr}")
    if config.alpha is not None and (not math.isfinite(config.alpha) or config.alpha <= 0):
        raise TrainError(f"--alpha must be a positive number, got {config.alpha}")
    if config.resolution is not None and config.resolution < 8:
        raise TrainError(f"--resolution must be at least 8 pixels, got {config.resolution}")
    if config.save_every < 0:
        raise TrainError(f"--save-every must be 0 (never) or more, got {config.save_every}")
    if config.mixed_precision not in MIXED_PRECISION:
        raise TrainError(
            f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}, got {config.mixed_precision!r}"
        )
    if config.format not in FORMATS:
        raise TrainError(f"--format must be one of {', '.join(FORMATS)}, got {config.format!r}")
    if config.output.suffix != ".safetensors":
        raise TrainError(f"-o {config.output}: the output must be a .safetensors file")
    try:
        torch.device(config.device)
    except RuntimeError as error:
        raise TrainError(f"--device {config.device!r}: {error}") from error


class DiffusionObjective:
    """Per-sample diffusion losses of a :class:`refiners_core.TrainablePipeline` on :class:`TrainingData`.

    Sample ``i`` at position ``j`` of step ``s``: its latents (the VAE posterior mean of its image, computed
    once with ``cache_latents``), then from :func:`~refiners_train.schedule.sample_generator` ``(seed, s, j)``
    a timestep in ``[0, num_train_timesteps)`` and the noise.
    """

    def __init__(
        self, pipeline: Any, data: TrainingData, seed: int, cache_latents: bool = False, train_text: bool = False
    ) -> None:
        self.pipeline = pipeline
        self.data = data
        self.seed = seed
        self.cache_latents = cache_latents
        self.train_text = train_text
        self._latents: dict[int, torch.Tensor] = {}

    def latents(self, index: int) -> torch.Tensor:
        """The latents of sample ``index`` (cached with ``cache_latents``)."""
        cached = self._latents.get(index)
        if cached is not None:
            return cached
        latents = self.pipeline.encode_images(self.data.image(index)[None])[0].float()
        if self.cache_latents:
            self._latents[index] = latents
        return latents

    def __call__(self, indices: list[int], positions: list[int], step: int) -> torch.Tensor:
        latents = torch.stack([self.latents(index) for index in indices])
        noises, timesteps = [], []
        for position in positions:
            generator = sample_generator(self.seed, step, position)
            timesteps.append(torch.randint(0, self.pipeline.num_train_timesteps, (), generator=generator))
            noises.append(torch.randn(latents.shape[1:], generator=generator))
        captions = [self.data.samples[index].caption for index in indices]
        with torch.set_grad_enabled(self.train_text):
            conditioning = self.pipeline.encode_prompts(captions)
        noise = torch.stack(noises).to(latents.device)
        return self.pipeline.training_loss(latents, conditioning, noise, torch.stack(timesteps).to(latents.device))  # type: ignore[no-any-return]


def _metadata(
    config: LoraTrainingConfig, pipeline: Any, data: TrainingData, alpha: float, world: int
) -> dict[str, str]:
    architecture = str(getattr(pipeline, "architecture", getattr(pipeline, "topology", "")))
    width, height = data.sizes[0]
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items() if k != "extra_metadata"}
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(config.rank),
        "ss_network_alpha": f"{alpha:g}",
        "ss_base_model_version": BASE_MODEL_VERSIONS.get(architecture, architecture),
        "ss_tag_frequency": json.dumps({config.data.name: tag_frequency(data.samples)}),
        "ss_num_train_images": str(len(data.samples)),
        "ss_max_train_steps": str(config.steps),
        "ss_learning_rate": f"{config.lr:g}",
        "ss_unet_lr": f"{config.lr:g}",
        "ss_text_encoder_lr": f"{config.lr:g}" if config.text_encoder else "0",
        "ss_train_batch_size": str(config.batch_size),
        "ss_num_processes": str(world),
        "ss_gradient_accumulation_steps": str(config.gradient_accumulation),
        "ss_mixed_precision": config.mixed_precision,
        "ss_resolution": f"({width}, {height})",
        "ss_enable_bucket": str(config.buckets),
        "ss_seed": str(config.seed),
        "ss_cache_latents": str(config.cache_latents),
        "ss_gradient_checkpointing": str(config.gradient_checkpointing),
        "ss_optimizer": "torch.optim.AdamW",
        "ss_network_train_unet_only": str(not config.text_encoder),
        "refiners_train_settings": json.dumps(settings, sort_keys=True),
    }
    return {**metadata, **config.extra_metadata}


def _validation_sample(pipeline: Any, prompt: str, folder: Path, seed: int) -> Any:
    def write(step: int) -> None:
        with torch.no_grad():
            image = pipeline.generate(prompt, seed=seed, steps=20)
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"sample-{step:08d}.png")

    return write


def _run(config: LoraTrainingConfig) -> list[dict[str, Any]]:
    device = torch.device(config.device)
    if device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))  # one device per process
    group = join_group(device)
    try:
        return _train(config, device, group)
    finally:
        leave_group()


def _train(config: LoraTrainingConfig, device: torch.device, group: ProcessGroup) -> list[dict[str, Any]]:
    from refiners_core.plugins.resolution import find_adapter_family

    samples = read_folder(config.data)
    dtype = MIXED_PRECISION[config.mixed_precision]
    pipeline = import_object(config.base_loader)(config.base, device=device, dtype=dtype)
    for member in ("encode_images", "encode_prompts", "training_loss", "num_train_timesteps", "components"):
        if not hasattr(pipeline, member):
            raise TrainError(f"--base {config.base}: its base-model plugin cannot train ({member} missing)")
    resolution = config.resolution or int(pipeline.default_size)
    multiple = int(getattr(pipeline, "size_multiple", 8))
    if resolution % multiple:
        raise TrainError(f"--resolution must be a multiple of {multiple} for this base model, got {resolution}")
    data = TrainingData.build(samples, resolution, config.buckets, step=max(multiple, min(64, resolution // 4)))
    components = ("unet", *(name for name in pipeline.components() if name.startswith("text_encoder")))
    create = find_adapter_family("lora").load_create()
    lora = create(
        pipeline,
        rank=config.rank,
        alpha=config.alpha,
        components=components if config.text_encoder else ("unet",),
        seed=config.seed,
    )
    if config.gradient_checkpointing:
        enable = getattr(pipeline, "enable_gradient_checkpointing", None)
        if enable is None:
            raise TrainError(f"--base {config.base}: its base-model plugin has no gradient checkpointing")
        enable()
    global_batch = config.batch_size * group.world_size * config.gradient_accumulation
    plan = BatchPlan(data.groups(), global_batch, config.seed)
    objective = DiffusionObjective(pipeline, data, config.seed, config.cache_latents, config.text_encoder)
    options = TrainingOptions(
        steps=config.steps,
        batch_size=config.batch_size,
        gradient_accumulation=config.gradient_accumulation,
        lr=config.lr,
        mixed_precision=config.mixed_precision,
        save_every=config.save_every,
        checkpoint_dir=config.checkpoints,
        resume=config.resume,
        progress=config.progress,
    )
    on_save = None
    if config.validation_prompt:
        on_save = _validation_sample(pipeline, config.validation_prompt, config.checkpoints, config.seed)
    trainer = Trainer(list(pipeline.components().values()), objective, plan, options, group, device, on_save=on_save)
    history = trainer.train()
    if group.is_main:
        metadata = _metadata(config, pipeline, data, lora.alpha, group.world_size)
        lora.save(config.output, format=config.format, metadata=metadata)
    return history


def train_lora(config: LoraTrainingConfig) -> list[dict[str, Any]]:
    """Train a LoRA as ``config`` says and write it to ``config.output`` (main process).

    Options and data are checked first (one :class:`TrainError` before any step). With ``num_processes > 1``
    outside a ``torchrun`` group, that many processes are started here; the history returned is then empty
    (read ``log.jsonl`` in the checkpoint folder).
    """
    check_config(config)
    read_folder(config.data)
    in_group = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if config.num_processes > 1 and not in_group:
        spawn(config.num_processes, _spawned, config)
        return []
    return _run(config)


def _spawned(config: LoraTrainingConfig) -> None:
    _run(config)
