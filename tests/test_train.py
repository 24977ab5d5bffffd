"""refiners-train: the loss goes down, process configurations agree, resume equals uninterrupted, the files load
in diffusers and in ``refiners generate``, bad data fails before any step, bf16 runs, a T2I-Adapter trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from refiners_train.data import TrainingData, bucket_sizes, read_folder
from refiners_train.errors import TrainError
from refiners_train.lora import DiffusionObjective, train_lora
from refiners_train.schedule import BatchPlan
from refiners_train.trainer import Trainer
from safetensors import safe_open
from train_fixtures import lora_config, max_difference, one_thread, tiny_base, toy_data  # noqa: F401

EQUAL_WEIGHTS = 1e-4  # float rounding, amplified by Adam on near-zero gradients (lr 1e-2, weights move ~3e-2)


def _fixed_loss(pipeline: object, data: Path, resolution: int = 64) -> float:
    """The mean loss on every sample with fixed noise and timesteps (positions 0.., step 10**6)."""
    samples = read_folder(data)
    objective = DiffusionObjective(pipeline, TrainingData.build(samples, resolution), seed=123)
    indices = list(range(len(samples)))
    with torch.no_grad():
        return float(objective(indices, indices, 10**6).mean())


def test_loss_goes_down(tiny_base: Path, toy_data: Path, tmp_path: Path) -> None:  # noqa: F811
    import refiners_sd
    from refiners_lora.training import create_lora
    from refiners_train.schedule import BatchPlan
    from refiners_train.trainer import TrainingOptions

    pipeline = refiners_sd.load_pipeline(tiny_base)
    lora = create_lora(pipeline, rank=4, seed=0)
    samples = read_folder(toy_data)
    data = TrainingData.build(samples, 64)
    before = _fixed_loss(pipeline, toy_data)
    objective = DiffusionObjective(pipeline, data, seed=0, cache_latents=True)
    options = TrainingOptions(steps=20, batch_size=4, lr=4e-3, checkpoint_dir=tmp_path / "ckpt")
    trainer = Trainer(pipeline.unet, objective, BatchPlan(data.groups(), 4, 0), options)
    history = trainer.train()
    after = _fixed_loss(pipeline, toy_data)
    losses = [record["loss"] for record in history]
    print(f"fixed-noise loss {before:.4f} -> {after:.4f}; training loss first 5 {losses[:5]} last 5 {losses[-5:]}")
    assert after < before * 0.9
    assert sum(losses[-5:]) < sum(losses[:5])
    log = [json.loads(line) for line in (tmp_path / "ckpt" / "log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log] == list(range(1, 21))
    assert all(set(record) == {"step", "loss", "lr"} for record in log)
    assert sum(parameter.numel() for parameter in lora.parameters()) == sum(p.numel() for p in trainer.parameters)


def test_batch_and_accumulation_give_equal_weights(tiny_base: Path, toy_data: Path, tmp_path: Path) -> None:  # noqa: F811
    batch = lora_config(tiny_base, toy_data, tmp_path / "batch2.safetensors", batch_size=2)
    accumulated = lora_config(tiny_base, toy_data, tmp_path / "accum2.safetensors", gradient_accumulation=2)
    train_lora(batch)
    train_lora(accumulated)
    difference = max_difference(batch.output, accumulated.output)
    print(f"1x batch 2 vs 1x batch 1 x accumulation 2: max |difference| {difference:.2e}")
    assert difference < EQUAL_WEIGHTS
    single = lora_config(tiny_base, toy_data, tmp_path / "single.safetensors")
    train_lora(single)
    assert max_difference(batch.output, single.output) > 1e-3  # a different global batch does change the result


def test_gradient_checkpointing_gives_the_same_weights(tiny_base: Path, toy_data: Path, tmp_path: Path) -> None:  # noqa: F811
    plain = lora_config(tiny_base, toy_data, tmp_path / "plain.safetensors", steps=2, batch_size=2)
    recomputed = lora_config(
        tiny_base, toy_data, tmp_path / "checkpointed.safetensors", steps=2, batch_size=2, gradient_checkpointing=True
    )
    train_lora(plain)
    train_lora(recomputed)
    assert max_difference(plain.output, recomputed.output) < EQUAL_WEIGHTS


def test_interrupted_and_resumed_equals_uninterrupted(
    tiny_base: Path,  # noqa: F811
    toy_data: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    whole = lora_config(tiny_base, toy_data, tmp_path / "whole.safetensors", steps=4, batch_size=2)
    train_lora(whole)
    broken = lora_config(tiny_base, toy_data, tmp_path / "resumed.safetensors", steps=4, batch_size=2, save_every=2)
    original_step = Trainer.train_step

    def killed_at_step_3(self: Trainer) -> float:
        if self.step == 3:
            raise KeyboardInterrupt
        return original_step(self)

    monkeypatch.setattr(Trainer, "train_step", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train_lora(broken)
    monkeypatch.setattr(Trainer, "train_step", original_step)
    assert not broken.output.exists()
    assert sorted(path.name for path in broken.checkpoints.iterdir()) == ["log.jsonl", "step-00000002.pt"]
    broken.resume = True
    train_lora(broken)
    difference = max_difference(whole.output, broken.output)
    print(f"interrupted at step 3 and resumed vs uninterrupted: max |difference| {difference:.2e}")
    assert difference == 0.0
    log = [json.loads(line) for line in (broken.checkpoints / "log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log] == [1, 2, 3, 4]
    broken.seed = 1
    with pytest.raises(TrainError, match="step-00000004.pt was made with other settings"):
        train_lora(broken)  # another seed would not continue the same run


def test_checkpoints_are_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from refiners_train.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint

    save_checkpoint(tmp_path, 2, {"parameters": [torch.ones(3)]})

    def dies_midway(state: object, target: Path) -> None:
        Path(target).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 4, {"parameters": [torch.zeros(3)]})
    assert [path.name for path in tmp_path.iterdir()] == ["step-00000002.pt"]
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and load_checkpoint(latest)["step"] == 2


def test_bad_data_is_one_error_before_any_step(tiny_base: Path, toy_data: Path, tmp_path: Path) -> None:  # noqa: F811
    import shutil

    data = tmp_path / "data"
    shutil.copytree(toy_data, data)
    (data / "green.txt").unlink()
    output = tmp_path / "out.safetensors"
    with pytest.raises(TrainError, match="green.png: no caption"):
        train_lora(lora_config(tiny_base, data, output))
    (data / "green.txt").write_text("a green square")
    (data / "red.png").write_bytes((data / "red.png").read_bytes()[:60])  # truncated
    with pytest.raises(TrainError, match="red.png: not a readable image"):
        train_lora(lora_config(tiny_base, data, output))
    (data / "red.png").unlink()
    (data / "red.txt").unlink()
    (data / "metadata.jsonl").write_text(
        '{"file_name": "blue.png", "text": "blue"}\n{"file_name": "gone.png", "text": "x"}\n'
    )
    with pytest.raises(TrainError, match="gone.png: no such image"):
        train_lora(lora_config(tiny_base, data, output))
    assert not output.exists() and not output.with_name("out-checkpoints").exists()


def test_metadata_jsonl_and_buckets(tiny_base: Path, tmp_path: Path) -> None:  # noqa: F811
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    lines = []
    for index, size in enumerate([(96, 48), (100, 50), (48, 96), (64, 64)]):
        Image.new("RGB", size, (40 * index, 90, 200)).save(data / f"{index}.webp")
        lines.append(json.dumps({"file_name": f"{index}.webp", "text": f"shape {index}"}))
    (data / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    samples = read_folder(data)
    assert [sample.caption for sample in samples] == ["shape 0", "shape 1", "shape 2", "shape 3"]
    buckets = TrainingData.build(samples, 64, buckets=True, step=16)
    assert buckets.sizes[0] == buckets.sizes[1] and buckets.sizes[0][0] > buckets.sizes[0][1]
    assert buckets.sizes[2][0] < buckets.sizes[2][1] and buckets.sizes[3] == (64, 64)
    assert all(width * height <= 64 * 64 for width, height in bucket_sizes(64, 16))
    plan = BatchPlan(buckets.groups(), 2, seed=0)
    for step in range(6):
        assert len({buckets.sizes[index] for index in plan.batch(step)}) == 1  # one size per batch
    assert tuple(buckets.image(0).shape) == (3, buckets.sizes[0][1], buckets.sizes[0][0])
    output = tmp_path / "bucketed.safetensors"
    train_lora(lora_config(tiny_base, data, output, buckets=True, batch_size=2, steps=2))
    assert output.is_file()


def test_bf16_mixed_precision_runs_on_cpu(tiny_base: Path, toy_data: Path, tmp_path: Path) -> None:  # noqa: F811
    output = tmp_path / "bf16.safetensors"
    history = train_lora(lora_config(tiny_base, toy_data, output, mixed_precision="bf16", batch_size=2, steps=2))
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(record["loss"])) for record in history)
    with safe_open(str(output), "pt") as handle:
        assert handle.metadata()["ss_mixed_precision"] == "bf16"
        assert all(handle.get_tensor(key).dtype == torch.float32 for key in handle.keys())
        ups = [handle.get_tensor(key) for key in handle.keys() if key.endswith("lora_up.weight")]
    assert any(float(up.abs().max()) > 0 for up in ups)  # it learnt something
