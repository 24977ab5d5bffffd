"""refiners-train: train adapters on any trainable base model, one process or many (torch.distributed DDP).

Names are imported on first access (PEP 562) so that ``refiners_train.plugin`` stays torch-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from refiners_core.lazy import lazy_exports

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "Trainer": "refiners_train.trainer",
    "TrainingOptions": "refiners_train.trainer",
    "trainable_parameters": "refiners_train.trainer",
    "BatchPlan": "refiners_train.schedule",
    "sample_generator": "refiners_train.schedule",
    "TrainingData": "refiners_train.data",
    "read_folder": "refiners_train.data",
    "DiffusionObjective": "refiners_train.lora",
    "LoraTrainingConfig": "refiners_train.lora",
    "train_lora": "refiners_train.lora",
    "TrainError": "refiners_train.errors",
}

__all__ = ["__version__", *_LAZY]

__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)

if TYPE_CHECKING:
    from refiners_train.data import TrainingData, read_folder
    from refiners_train.errors import TrainError
    from refiners_train.lora import DiffusionObjective, LoraTrainingConfig, train_lora
    from refiners_train.schedule import BatchPlan, sample_generator
    from refiners_train.trainer import Trainer, TrainingOptions, trainable_parameters
