"""Fixtures for the registry tests: a local Hub holding small real safetensors files, and a catalog for them.

``hub_catalog`` installs a family plugin ``refiners-testlora`` (family ``testlora``, alias ``testlora-alias``,
through ``make_plugin_dist``), serves two repositories on ``hub_server`` and writes a catalog for them, named
in ``REFINERS_CATALOG``:

- ``test/lora-tiny`` (family ``testlora``): ``lora.safetensors`` in ``test-org/tiny-lora``;
- ``test/big`` (family ``testlora``): ``weights/big.safetensors`` (a few MiB) in ``test-org/big``;
- ``test/pair`` (family ``testlora``): two files of ``test-org/tiny-lora`` (``lora.safetensors``, ``config.json``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hub_fixtures import hub_env, hub_server, safetensors_bytes, write_catalog  # noqa: F401
from hub_server import HubServer


@dataclass
class HubCatalog:
    """What ``hub_catalog`` set up."""

    hub: HubServer
    env: dict[str, str]
    catalog: Path
    files: dict[str, bytes]  # entry name -> bytes of its (main) file
    repos: dict[str, tuple[str, str, str]]  # entry name -> (repo_id, revision, path)

    def entry(self, served: str, **overrides: Any) -> dict[str, Any]:
        """A catalog mapping for the file of entry ``served`` (for writing further catalogs)."""
        repo_id, revision, path = self.repos[served]
        data = self.files[served]
        entry: dict[str, Any] = {
            "name": served,
            "family": "testlora",
            "base_model": "sd15",
            "description": f"test entry {served}",
            "license": "mit",
            "tags": ["test"],
            "source": {
                "repo_id": repo_id,
                "revision": revision,
                "files": [{"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}],
            },
        }
        entry.update(overrides)
        return entry


TESTLORA_PLUGIN = """
from refiners_core import AdapterFamily, hookimpl


@hookimpl
def refiners_adapter_families():
    return [
        AdapterFamily(
            name="testlora",
            description="a LoRA-like family for registry tests",
            loader="refiners_testlora.impl:load",
            base_models=("sd15",),
            aliases=("testlora-alias",),
        )
    ]
"""

TESTLORA_IMPL = """
import refiners_core as rc


class TinyLora(rc.Sum, rc.Adapter[rc.Linear]):
    def __init__(self, target, tensors, scale):
        with self.setup_adapter(target):
            down = rc.Linear(target.in_features, tensors["down.weight"].shape[0], bias=False)
            up = rc.Linear(tensors["up.weight"].shape[1], target.out_features, bias=False)
            down.weight.data.copy_(tensors["down.weight"])
            up.weight.data.copy_(tensors["up.weight"])
            super().__init__(target, rc.Chain(down, up, rc.Multiply(scale)))


def load(model, weights, scale=1.0, **options):
    allow_pickle = options.get("allow_pickle", False)
    tensors = weights if isinstance(weights, dict) else rc.load_tensors(weights, allow_pickle=allow_pickle)
    target = next(m for m in model.modules() if isinstance(m, rc.Linear))
    return TinyLora(target, tensors, scale).inject()
"""


def _tensors(seed: int, rows: int) -> dict[str, Any]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    return {
        "down.weight": torch.randn(rows, 64, generator=generator),
        "up.weight": torch.randn(64, rows, generator=generator),
        "steps": torch.arange(4, dtype=torch.int64),
    }


@pytest.fixture
def hub_catalog(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HubCatalog:
    """Serve the test repositories and name their catalog in ``REFINERS_CATALOG``."""
    make_plugin_dist = request.getfixturevalue("make_plugin_dist")  # before hub_env copies PYTHONPATH
    make_plugin_dist("refiners-testlora", TESTLORA_PLUGIN, extra_modules={"refiners_testlora.impl": TESTLORA_IMPL})
    hub: HubServer = request.getfixturevalue("hub_server")
    env: dict[str, str] = request.getfixturevalue("hub_env")
    tiny = safetensors_bytes(_tensors(0, 8))
    big = safetensors_bytes(_tensors(1, 8192))  # ~4 MiB: several chunks on the wire
    config = b'{"rank": 8}\n'
    tiny_rev = hub.add_repo("test-org/tiny-lora", {"lora.safetensors": tiny, "config.json": config})
    big_rev = hub.add_repo("test-org/big", {"weights/big.safetensors": big})
    found = HubCatalog(
        hub=hub,
        env=env,
        catalog=tmp_path / "catalogs" / "test.toml",
        files={"test/lora-tiny": tiny, "test/big": big, "test/pair": tiny},
        repos={
            "test/lora-tiny": ("test-org/tiny-lora", tiny_rev, "lora.safetensors"),
            "test/big": ("test-org/big", big_rev, "weights/big.safetensors"),
            "test/pair": ("test-org/tiny-lora", tiny_rev, "lora.safetensors"),
        },
    )
    pair = found.entry("test/pair")
    pair["source"]["files"].append({"path": "config.json", "sha256": hashlib.sha256(config).hexdigest()})
    write_catalog(found.catalog, [found.entry("test/lora-tiny"), found.entry("test/big"), pair])
    monkeypatch.setenv("REFINERS_CATALOG", str(found.catalog))
    env["REFINERS_CATALOG"] = str(found.catalog)
    return found


def run_cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``refiners ARGS`` in a subprocess with ``env``; return the completed process (text mode)."""
    return subprocess.run(
        [sys.executable, "-m", "refiners_core.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=os.getcwd(),
    )


def blobs(env: dict[str, str], repo_id: str) -> list[Path]:
    """Every file under the repository's ``blobs`` folder in the cache of ``env`` (incomplete ones included)."""
    folder = Path(env["HF_HOME"]) / "hub" / ("models--" + repo_id.replace("/", "--")) / "blobs"
    return sorted(folder.iterdir()) if folder.is_dir() else []
