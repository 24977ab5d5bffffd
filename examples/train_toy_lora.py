"""Train a LoRA in seconds from Python (as in a notebook): a toy dataset of solid-colour squares, the tiny demo
base model, the ``lora`` family's ``create`` and ``refiners_train.Trainer``.

Run: ``python examples/train_toy_lora.py BASE_FOLDER WORK_FOLDER`` (``BASE_FOLDER`` from ``refiners demo-assets``).
Writes ``WORK_FOLDER/data/`` (the images and captions) and ``WORK_FOLDER/toy_lora.safetensors`` (kohya layout), and
prints the loss before and after. The same run from the command line is
``refiners train lora --base BASE --data WORK_FOLDER/data -o toy_lora.safetensors --steps 60 --batch-size 4 --lr 1e-2``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from PIL import Image
from refiners_sd import load_pipeline
from refiners_train import BatchPlan, DiffusionObjective, Trainer, TrainingData, TrainingOptions, read_folder

from refiners_core.plugins.resolution import find_adapter_family

COLOURS = {"red": (220, 30, 30), "green": (30, 190, 60), "blue": (30, 60, 220), "yellow": (230, 210, 30)}


def write_dataset(folder: Path) -> Path:
    """Four 64x64 solid-colour squares captioned ``a <colour> square``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, colour in COLOURS.items():
        Image.new("RGB", (64, 64), colour).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"a {name} square", encoding="utf-8")
    return folder


def main(base: Path, work: Path) -> Path:
    torch.manual_seed(0)
    pipeline = load_pipeline(base)
    lora = find_adapter_family("lora").load_create()(pipeline, rank=8, seed=0)  # freezes the rest
    data = TrainingData.build(read_folder(write_dataset(work / "data")), resolution=64)
    objective = DiffusionObjective(pipeline, data, seed=0, cache_latents=True)
    plan = BatchPlan(data.groups(), global_batch=4, seed=0)
    trainer = Trainer(pipeline.unet, objective, plan, TrainingOptions(steps=60, batch_size=4, lr=1e-2))
    history = trainer.train()
    print(f"loss: first step {history[0]['loss']:.3f}, last 10 steps {sum(r['loss'] for r in history[-10:]) / 10:.3f}")
    return lora.save(work / "toy_lora.safetensors", metadata={"ss_training_comment": "toy squares"})


if __name__ == "__main__":
    print(main(Path(sys.argv[1]), Path(sys.argv[2])))
