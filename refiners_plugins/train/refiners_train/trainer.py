"""The trainer: whatever adapters are injected in a model (its parameters that require gradients) learn.

:class:`Trainer` knows nothing of diffusion: it asks an *objective* for the per-sample losses of a
micro-batch, averages them over the global batch, and takes AdamW steps; data parallelism is
:class:`torch.nn.parallel.DistributedDataParallel` (one process per device, see
:mod:`refiners_train.distributed`), mixed precision is :func:`torch.autocast` (plus a gradient scaler for
fp16), checkpoints are atomic files and resuming restores the parameters, the optimizer, the scaler and the
step. The batches come from a :class:`~refiners_train.schedule.BatchPlan`, so the result does not depend on
the number of processes (see :mod:`refiners_train.schedule`).

In a notebook::

    trainer = Trainer(unet, objective, plan, TrainingOptions(steps=100, lr=1e-4))
    history = trainer.train()   # [{"step": 1, "loss": ..., "lr": ...}, ...]
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from refiners_train.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint, write_atomically
from refiners_train.distributed import ProcessGroup
from refiners_train.errors import TrainError
from refiners_train.schedule import BatchPlan

__all__ = ["LOG_FILE", "MIXED_PRECISION", "Objective", "Trainer", "TrainingOptions", "trainable_parameters"]

MIXED_PRECISION = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}
LOG_FILE = "log.jsonl"

Objective = Callable[[list[int], list[int], int], torch.Tensor]
"""``objective(sample_indices, positions, step) -> per-sample losses [len(sample_indices)]``; ``positions``
are the samples' places in the global batch, which fix their random numbers."""


@dataclass
class TrainingOptions:
    """How to train.

    Attributes:
        steps: optimizer steps in all. batch_size: samples per process and micro-batch.
        gradient_accumulation: micro-batches per step. lr, weight_decay: AdamW's (constant learning rate).
        max_grad_norm: gradients are clipped to this norm (``None``: never).
        mixed_precision: ``no``, ``fp16`` or ``bf16`` (autocast; parameters stay in their dtype).
        save_every: write a checkpoint every that many steps (0: never). checkpoint_dir: where checkpoints
            and ``log.jsonl`` go (``None``: nowhere). resume: continue from the latest checkpoint there.
        progress: draw a progress bar on stderr (main process only).
    """

    steps: int
    batch_size: int = 1
    gradient_accumulation: int = 1
    lr: float = 1e-4
    weight_decay: float = 1e-2
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "no"
    save_every: int = 0
    checkpoint_dir: Path | None = None
    resume: bool = False
    progress: bool = False


def trainable_parameters(model: nn.Module | Iterable[nn.Module]) -> list[nn.Parameter]:
    """The parameters of ``model`` (a module or several) that require gradients, each once, in module order."""
    modules = [model] if isinstance(model, nn.Module) else list(model)
    seen: set[int] = set()
    found: list[nn.Parameter] = []
    for module in modules:
        for parameter in module.parameters():
            if parameter.requires_grad and id(parameter) not in seen:
                seen.add(id(parameter))
                found.append(parameter)
    return found


class _Objective(nn.Module):
    """The module DistributedDataParallel wraps: it owns the trainable parameters, its forward is the objective."""

    def __init__(self, parameters: Sequence[nn.Parameter], objective: Objective) -> None:
        super().__init__()
        self.trainable = nn.ParameterList(parameters)
        self.__dict__["objective"] = objective  # not a submodule: the frozen model is none of DDP's business

    def forward(self, indices: list[int], positions: list[int], step: int) -> torch.Tensor:
        objective: Objective = self.__dict__["objective"]
        return objective(indices, positions, step)


class Trainer:
    """Trains the parameters of ``model`` that require gradients (see the module docstring).

    Args:
        model: a module (or several) holding the injected adapters; only parameters requiring gradients learn.
        objective: per-sample losses of a micro-batch (see :data:`Objective`).
        plan: the global batches (its ``global_batch`` must be ``batch_size x processes x accumulation``).
        options: see :class:`TrainingOptions`.
        group: this process's place among the data-parallel processes (one process by default).
        on_save: called on the main process after each checkpoint as ``on_save(step)`` (sample images).
        on_step: called on every process after each step as ``on_step(step, loss)``.
    """

    def __init__(
        self,
        model: nn.Module | Iterable[nn.Module],
        objective: Objective,
        plan: BatchPlan,
        options: TrainingOptions,
        group: ProcessGroup | None = None,
        device: torch.device | str | None = None,
        on_save: Callable[[int], None] | None = None,
        on_step: Callable[[int, float], None] | None = None,
    ) -> None:
        self.group = group or ProcessGroup()
        self.options = options
        self.plan = plan
        self.parameters = trainable_parameters(model)
        if not self.parameters:
            raise TrainError("nothing to train: no parameter of the model requires gradients (inject an adapter)")
        if options.mixed_precision not in MIXED_PRECISION:
            raise TrainError(f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}")
        expected = options.batch_size * self.group.world_size * options.gradient_accumulation
        if plan.global_batch != expected:
            raise TrainError(f"the batch plan has global batches of {plan.global_batch}, expected {expected}")
        self.device = torch.device(device) if device is not None else self.parameters[0].device
        self.module = _Objective(self.parameters, objective)
        self.ddp: nn.Module | None = None
        if self.group.world_size > 1:
            device_ids = [self.device] if self.device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(self.module, device_ids=device_ids)
        self.optimizer = torch.optim.AdamW(self.parameters, lr=options.lr, weight_decay=options.weight_decay)
        use_scaler = options.mixed_precision == "fp16" and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.step = 0
        self.on_save = on_save
        self.on_step = on_step

    # ---- checkpoints -------------------------------------------------------------------------------

    def _fingerprint(self) -> dict[str, Any]:
        return {"seed": self.plan.seed, "global_batch": self.plan.global_batch, "parameters": len(self.parameters)}

    def state(self) -> dict[str, Any]:
        """What a checkpoint holds (parameters on the CPU, optimizer and scaler states, batch settings)."""
        return {
            "parameters": [parameter.detach().cpu() for parameter in self.parameters],
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "plan": self._fingerprint(),
        }

    def load_state(self, state: dict[str, Any], source: Path | str = "checkpoint") -> None:
        """Restore :meth:`state` (and the step).

        Raises:
            TrainError: a checkpoint of another model or batch sequence.
        """
        if state.get("plan") != self._fingerprint():
            raise TrainError(
                f"{source} was made with other settings ({state.get('plan')}, now {self._fingerprint()}): "
                "resume with the same seed, global batch size and adapter"
            )
        with torch.no_grad():
            for parameter, saved in zip(self.parameters, state["parameters"], strict=True):
                parameter.copy_(saved)
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])

    def _resume(self) -> None:
        folder = self.options.checkpoint_dir
        if not self.options.resume or folder is None:
            return
        latest = latest_checkpoint(folder)
        if latest is not None:
            self.load_state(load_checkpoint(latest), latest)
            if self.group.is_main:
                self._truncate_log(folder / LOG_FILE)

    def _truncate_log(self, log: Path) -> None:
        if not log.is_file():
            return
        lines = [line for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line)["step"] <= self.step]
        write_atomically(log, lambda target: target.write_text("".join(f"{line}\n" for line in kept), "utf-8"))

    # ---- training ----------------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = MIXED_PRECISION[self.options.mixed_precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _micro_batches(self, step: int) -> Iterator[tuple[int, list[int], list[int]]]:
        batch = self.plan.batch(step)
        size, processes = self.options.batch_size, self.group.world_size
        for micro in range(self.options.gradient_accumulation):
            start = (micro * processes + self.group.rank) * size
            positions = list(range(start, start + size))
            yield micro, [batch[position] for position in positions], positions

    def train_step(self) -> float:
        """One optimizer step on global batch :attr:`step`; returns its mean loss (over all processes)."""
        forward = self.ddp if self.ddp is not None else self.module
        accumulation = self.options.gradient_accumulation
        total = torch.zeros((), device=self.device)
        for micro, indices, positions in self._micro_batches(self.step):
            last = micro == accumulation - 1
            sync = contextlib.nullcontext() if last or self.ddp is None else self.ddp.no_sync()  # type: ignore[operator]
            with sync:
                with self._autocast():
                    losses = forward(indices, positions, self.step)
                loss = losses.float().sum() / (len(indices) * accumulation)
                self.scaler.scale(loss).backward()
            total += losses.detach().float().sum()
        if self.group.world_size > 1:
            dist.all_reduce(total)
        self.scaler.unscale_(self.optimizer)
        if self.options.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.options.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return float(total) / self.plan.global_batch

    def _log(self, record: dict[str, Any]) -> None:
        folder = self.options.checkpoint_dir
        if folder is None or not self.group.is_main:
            return
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / LOG_FILE).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def _checkpoint(self) -> None:
        every, folder = self.options.save_every, self.options.checkpoint_dir
        if not every or folder is None or self.step % every:
            return
        if self.group.is_main:
            save_checkpoint(folder, self.step, self.state())
            if self.on_save is not None:
                self.on_save(self.step)
        if self.group.world_size > 1:
            dist.barrier()

    def train(self) -> list[dict[str, Any]]:
        """Train up to ``options.steps`` (after resuming, if asked); returns one record per step taken."""
        self._resume()
        history: list[dict[str, Any]] = []
        with _progress(self.options.steps, self.step, self.options.progress and self.group.is_main) as advance:
            while self.step < self.options.steps:
                loss = self.train_step()
                record = {"step": self.step, "loss": loss, "lr": self.optimizer.param_groups[0]["lr"]}
                history.append(record)
                self._log(record)
                advance(loss)
                if self.on_step is not None:
                    self.on_step(self.step, loss)
                self._checkpoint()
        return history


@contextlib.contextmanager
def _progress(total: int, done: int, visible: bool) -> Iterator[Callable[[float], None]]:
    """A rich progress bar on stderr with the loss and steps per second; yields ``advance(loss)``."""
    if not visible:
        yield lambda loss: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[rate]} steps/s"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    task = progress.add_task("train", total=total, completed=done, loss="-", rate="-")
    start, first = time.perf_counter(), done

    def advance(loss: float) -> None:
        nonlocal first
        completed = progress.tasks[0].completed + 1
        rate = (completed - first) / max(time.perf_counter() - start, 1e-9)
        progress.update(task, completed=completed, loss=f"{loss:.4f}", rate=f"{rate:.2f}")

    with progress:
        yield advance
