"""Pytest fixtures for tests that download from a local Hub (see ``tests/hub_server.py``).

Expose them in a test module as module attributes (pytest finds fixtures there; plain assignments keep ruff's
F811 quiet when tests take them as parameters)::

    import hub_fixtures

    hub_server = hub_fixtures.hub_server
    hub_env = hub_fixtures.hub_env


- ``hub_server``: a started :class:`hub_server.HubServer`, stopped after the test.
- ``hub_env``: a copy of ``os.environ`` for subprocesses (CLI tests) pointing huggingface_hub at the server:
  ``HF_ENDPOINT``, ``HF_HOME`` (a temporary folder), ``HF_HUB_DISABLE_TELEMETRY=1``, no token, no proxy for
  127.0.0.1, ``XDG_CONFIG_HOME`` in the temporary folder (no user catalog), no ``REFINERS_CATALOG``.
  The same variables are set in the test process too (``monkeypatch``), for in-process API calls.

Helpers: ``safetensors_bytes(tensors)`` serialises real safetensors; ``catalog_text(entries)`` writes a
TOML catalog from mappings with the registry's schema.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hub_server import HubServer

_CLEARED = (
    "HF_HUB_OFFLINE",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_HUB_CACHE",
    "REFINERS_CATALOG",
    "HF_HUB_DISABLE_XET",
)


@pytest.fixture
def hub_server() -> Iterator[HubServer]:
    """A Hub-compatible server on 127.0.0.1, empty until the test adds repositories."""
    with HubServer() as server:
        yield server


@pytest.fixture
def hub_env(hub_server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for subprocesses (and this process) using ``hub_server`` and a fresh ``HF_HOME``."""
    values = {
        "HF_ENDPOINT": hub_server.url,
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DOWNLOAD_TIMEOUT": "10",
        "HF_HUB_ETAG_TIMEOUT": "10",
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),  # refiners-registry's records of verified files
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    for name in _CLEARED:
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    env.update(values)
    return env


def safetensors_bytes(tensors: Mapping[str, Any]) -> bytes:
    """Serialise ``{name: torch.Tensor}`` to safetensors bytes (imports torch)."""
    from safetensors.torch import save

    return save(dict(tensors))


def catalog_text(entries: Sequence[Mapping[str, Any]]) -> str:
    """A TOML catalog with one ``[[adapter]]`` table per mapping (nested ``source`` and ``files`` included)."""
    lines: list[str] = []
    for entry in entries:
        lines.append("[[adapter]]")
        for key, value in entry.items():
            if key != "source":
                lines.append(f"{key} = {json.dumps(value)}")
        source = entry.get("source")
        if source is not None:
            lines.append("[adapter.source]")
            for key, value in source.items():
                if key != "files":
                    lines.append(f"{key} = {json.dumps(value)}")
            for file in source.get("files", []):
                lines.append("[[adapter.source.files]]")
                lines.extend(f"{key} = {json.dumps(value)}" for key, value in file.items())
        lines.append("")
    return "\n".join(lines)


def write_catalog(path: Path, entries: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``catalog_text(entries)`` to ``path`` and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(catalog_text(entries), encoding="utf-8")
    return path
