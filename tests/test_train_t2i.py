"""The same Trainer trains a T2I-Adapter on (image, condition) pairs: any injected adapter learns, the base stays."""

from __future__ import annotations

from pathlib import Path

import torch
from refiners_train.data import TrainingData, read_folder
from refiners_train.lora import DiffusionObjective
from refiners_train.schedule import BatchPlan
from refiners_train.trainer import Trainer, TrainingOptions
from train_fixtures import one_thread, tiny_base, toy_data  # noqa: F401


class ConditionedObjective(DiffusionObjective):
    """Diffusion losses with each sample's condition image (its grayscale) given to the T2I-Adapter first."""

    def __init__(self, adapter: object, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.adapter = adapter

    def __call__(self, indices: list[int], positions: list[int], step: int) -> torch.Tensor:
        conditions = torch.stack([self.data.image(index).mean(dim=0, keepdim=True) for index in indices])
        self.adapter.set_condition(conditions)  # type: ignore[attr-defined]
        return super().__call__(indices, positions, step)


def test_trainer_trains_a_t2i_adapter(tiny_base: Path, toy_data: Path) -> None:  # noqa: F811
    import refiners_sd
    from refiners_t2i import T2IAdapter, T2IConfig

    pipeline = refiners_sd.load_pipeline(tiny_base)
    for module in pipeline.components().values():
        module.requires_grad_(False)
    frozen = {name: value.clone() for name, value in pipeline.unet.state_dict().items()}
    torch.manual_seed(0)
    config = T2IConfig(in_channels=1, channels=tuple(pipeline.unet.config.block_out_channels), num_res_blocks=1)
    adapter = T2IAdapter(pipeline.unet, config, name="trained").inject()
    initial = [parameter.detach().clone() for parameter in adapter.parameters()]
    data = TrainingData.build(read_folder(toy_data), 64)
    objective = ConditionedObjective(adapter, pipeline, data, seed=0, cache_latents=True)
    indices = list(range(len(data.samples)))

    def fixed_loss() -> float:
        with torch.no_grad():
            return float(objective(indices, indices, 10**6).mean())

    before = fixed_loss()
    trainer = Trainer(
        adapter, objective, BatchPlan(data.groups(), 4, seed=0), TrainingOptions(steps=12, lr=2e-3, batch_size=4)
    )
    trainer.train()
    after = fixed_loss()
    print(f"T2I-Adapter: fixed-noise loss {before:.4f} -> {after:.4f}")
    assert after < before
    assert len(trainer.parameters) == len(initial)
    assert all(not torch.equal(a, b) for a, b in zip(initial, adapter.parameters(), strict=True))
    adapter.eject()
    assert all(torch.equal(value, frozen[name]) for name, value in pipeline.unet.state_dict().items())
