"""refiners-train across processes: 2 processes (gloo) x batch 1 give the weights of 1 process x batch 2."""

from __future__ import annotations

import json
from pathlib import Path

from refiners_train.lora import train_lora
from train_fixtures import lora_config, max_difference, one_thread, tiny_base, toy_data  # noqa: F401

EQUAL_WEIGHTS = 1e-4  # float rounding, amplified by Adam on near-zero gradients (lr 1e-2, weights move ~3e-2)


def test_two_processes_equal_one_process_with_the_global_batch(
    tiny_base: Path,  # noqa: F811
    toy_data: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    single = lora_config(tiny_base, toy_data, tmp_path / "single.safetensors", batch_size=2)
    train_lora(single)
    spread = lora_config(
        tiny_base,
        toy_data,
        tmp_path / "two.safetensors",
        num_processes=2,
        save_every=3,
        validation_prompt="a red square",
    )
    assert train_lora(spread) == []  # the history is in the log
    difference = max_difference(single.output, spread.output)
    print(f"1 process x batch 2 vs 2 processes (gloo) x batch 1: max |difference| {difference:.2e}")
    assert difference < EQUAL_WEIGHTS
    # rank 0 alone wrote: one log line per step, one checkpoint, one validation sample
    log = [json.loads(line) for line in (spread.checkpoints / "log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log] == [1, 2, 3]
    assert sorted(path.name for path in spread.checkpoints.iterdir()) == [
        "log.jsonl",
        "sample-00000003.png",
        "step-00000003.pt",
    ]
