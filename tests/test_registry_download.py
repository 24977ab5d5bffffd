"""Registry API against a local Hub: pull, sha256 check, cut transfers, offline, verify, remove, load, prune."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
import registry_fixtures
import torch
from refiners_registry import (
    HashMismatchError,
    NetworkError,
    NotCachedError,
    Registry,
    UnknownEntryError,
)
from refiners_registry.cache import prune
from registry_fixtures import HubCatalog, blobs

# fixtures used by this module (pytest finds fixtures by module attribute)
hub_server = registry_fixtures.hub_server
hub_env = registry_fixtures.hub_env
hub_catalog = registry_fixtures.hub_catalog


def _registry(hub: HubCatalog, **kwargs: object) -> Registry:
    return Registry(endpoint=hub.hub.url, plugins=False, **kwargs)  # type: ignore[arg-type]


def test_pull_downloads_and_checks(hub_catalog: HubCatalog) -> None:
    registry = _registry(hub_catalog)
    path = registry.pull("test/lora-tiny")
    assert path.read_bytes() == hub_catalog.files["test/lora-tiny"]
    assert Path(hub_catalog.env["HF_HOME"]) in path.parents
    assert registry.is_installed("test/lora-tiny")
    # a second pull uses the cache: no new GET
    gets = hub_catalog.hub.count("GET", "/resolve/")
    assert registry.pull("test/lora-tiny") == path
    assert hub_catalog.hub.count("GET", "/resolve/") == gets


def test_unchanged_file_is_hashed_once_and_a_changed_one_again(
    hub_catalog: HubCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    import refiners_registry.download as download
    import refiners_registry.verified as verified

    hashed: list[Path] = []
    real_sha256 = download.sha256_file

    def counting_sha256(path: Path) -> str:
        hashed.append(path)
        return real_sha256(path)

    monkeypatch.setattr(download, "sha256_file", counting_sha256)
    registry = _registry(hub_catalog)
    path = registry.pull("test/lora-tiny")
    registry.pull("test/lora-tiny")
    assert len(hashed) == 2  # recorded right after the download: not settled yet, hashed again
    monkeypatch.setattr(verified, "SETTLED_NS", 0)  # as if recorded long after the download
    registry.pull("test/lora-tiny")
    registry.load("test/lora-tiny")
    assert len(hashed) == 2  # trusted: unchanged since it was hashed
    records = list((Path(hub_catalog.env["XDG_CACHE_HOME"]) / "refiners" / "verified").iterdir())
    assert len(records) == 1 and not (Path(hub_catalog.env["HF_HOME"]) / "hub" / "refiners").exists()
    registry.pull("test/lora-tiny", force=True)
    assert len(hashed) == 3  # force always hashes
    time.sleep(0.05)  # past the file system's timestamp tick (the settling margin, zeroed here, covers it)
    # the same size and modification time, other bytes: the status-change time tells, and it is refused
    blob = Path(os.path.realpath(path))
    stat = blob.stat()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    os.utime(blob, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(HashMismatchError):
        registry.pull("test/lora-tiny")
    assert len(hashed) == 4 and not blob.exists()


def test_multi_file_entry_returns_folder(hub_catalog: HubCatalog) -> None:
    folder = _registry(hub_catalog).pull("test/pair")
    assert (folder / "lora.safetensors").is_file()
    assert (folder / "config.json").read_text() == '{"rank": 8}\n'


def test_tampered_file_is_rejected_and_removed(hub_catalog: HubCatalog) -> None:
    repo_id, revision, path = hub_catalog.repos["test/lora-tiny"]
    hub_catalog.hub.tamper(repo_id, path)
    registry = _registry(hub_catalog)
    with pytest.raises(HashMismatchError) as caught:
        registry.pull("test/lora-tiny")
    want = hashlib.sha256(hub_catalog.files["test/lora-tiny"]).hexdigest()
    assert caught.value.want == want and caught.value.got != want
    assert want in str(caught.value) and caught.value.got in str(caught.value)
    assert blobs(hub_catalog.env, repo_id) == []
    assert not registry.is_installed("test/lora-tiny")
    with pytest.raises(HashMismatchError):  # still nothing to load
        registry.load("test/lora-tiny")
    hub_catalog.hub.clear_faults()
    assert registry.pull("test/lora-tiny").read_bytes() == hub_catalog.files["test/lora-tiny"]


def test_tampered_local_dir_copy_is_removed(hub_catalog: HubCatalog, tmp_path: Path) -> None:
    repo_id, _, path = hub_catalog.repos["test/lora-tiny"]
    hub_catalog.hub.tamper(repo_id, path)
    with pytest.raises(HashMismatchError):
        _registry(hub_catalog).pull("test/lora-tiny", local_dir=tmp_path / "out")
    assert not (tmp_path / "out" / path).exists()
    hub_catalog.hub.clear_faults()
    local = _registry(hub_catalog).pull("test/lora-tiny", local_dir=tmp_path / "out")
    assert local == (tmp_path / "out" / path).resolve()
    assert local.read_bytes() == hub_catalog.files["test/lora-tiny"]


def test_body_cut_once_is_resumed(hub_catalog: HubCatalog) -> None:
    repo_id, _, path = hub_catalog.repos["test/big"]
    hub_catalog.hub.cut_body(repo_id, path, after=100_000, times=1)
    local = _registry(hub_catalog).pull("test/big")
    assert local.read_bytes() == hub_catalog.files["test/big"]
    assert hub_catalog.hub.count("GET", path) == 2  # the client retried (resuming what it had written)


def test_body_always_cut_leaves_nothing_then_retry_completes(
    hub_catalog: HubCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.file_download as file_download

    monkeypatch.setattr(file_download.time, "sleep", lambda _: None)  # skip the client's retry pauses
    repo_id, _, path = hub_catalog.repos["test/big"]
    hub_catalog.hub.cut_body(repo_id, path, after=50_000)
    registry = _registry(hub_catalog)
    with pytest.raises(NetworkError):
        registry.pull("test/big")
    assert blobs(hub_catalog.env, repo_id) == []
    assert not registry.is_installed("test/big")
    hub_catalog.hub.clear_faults()
    assert registry.pull("test/big").read_bytes() == hub_catalog.files["test/big"]


def test_offline_uses_cache_only(hub_catalog: HubCatalog) -> None:
    with pytest.raises(NotCachedError):
        _registry(hub_catalog, offline=True).pull("test/lora-tiny")
    path = _registry(hub_catalog).pull("test/lora-tiny")
    requests = len(hub_catalog.hub.requests)
    assert _registry(hub_catalog, offline=True).pull("test/lora-tiny") == path
    assert len(hub_catalog.hub.requests) == requests


def test_offline_from_environment(hub_catalog: HubCatalog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(NotCachedError):
        _registry(hub_catalog).pull("test/lora-tiny")
    assert hub_catalog.hub.requests == []


def test_unreachable_hub_is_a_network_error(hub_catalog: HubCatalog, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.utils._http as http

    monkeypatch.setattr(http.time, "sleep", lambda _: None)  # skip the client's backoff pauses
    url = hub_catalog.hub.url
    hub_catalog.hub.stop()
    with pytest.raises(NetworkError):
        Registry(endpoint=url, plugins=False).pull("test/lora-tiny")


def test_unknown_name_suggests(hub_catalog: HubCatalog) -> None:
    with pytest.raises(UnknownEntryError) as caught:
        _registry(hub_catalog).get("test/lora-tiy")
    assert "test/lora-tiny" in caught.value.suggestions


def test_verify_detects_corruption_in_cache(hub_catalog: HubCatalog) -> None:
    registry = _registry(hub_catalog)
    assert registry.verify("test/lora-tiny").files[0].status == "missing"
    path = registry.pull("test/lora-tiny")
    assert registry.verify("test/lora-tiny").ok
    blob = Path(os.path.realpath(path))
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    result = registry.verify("test/lora-tiny")
    assert not result.ok and result.files[0].status == "mismatch"
    with pytest.raises(HashMismatchError):  # a later pull/load re-hashes and refuses it
        registry.load("test/lora-tiny")
    assert not blob.exists()


def test_remove_keeps_files_other_entries_use(hub_catalog: HubCatalog) -> None:
    registry = _registry(hub_catalog)
    registry.pull("test/lora-tiny")
    registry.pull("test/pair")  # same repository, commit and safetensors file
    assert registry.shared_files("test/pair") == {"lora.safetensors": ["test/lora-tiny"]}
    assert registry.remove("test/pair") > 0  # config.json freed, the shared safetensors file kept
    assert registry.local_paths("test/pair")["config.json"] is None
    assert registry.verify("test/lora-tiny").ok  # the other entry still has its file
    assert registry.remove("test/lora-tiny") == 0  # test/pair still lists it
    assert registry.verify("test/lora-tiny").ok
    size = len(hub_catalog.files["test/lora-tiny"])
    assert registry.remove("test/lora-tiny", "test/pair") == size  # named together: it goes
    assert not registry.verify("test/lora-tiny").cached


def test_load_on_dtype_and_device(hub_catalog: HubCatalog) -> None:
    tensors = _registry(hub_catalog).load("test/lora-tiny", device="cpu", dtype=torch.float16)
    assert tensors["down.weight"].dtype == torch.float16
    assert tensors["steps"].dtype == torch.int64  # integer tensors keep their type
    assert tensors["down.weight"].device.type == "cpu"
    reference = torch.Generator().manual_seed(0)
    assert torch.allclose(tensors["down.weight"].float(), torch.randn(8, 64, generator=reference), atol=1e-2)


def test_prune_removes_abandoned_temporary_files_only(hub_catalog: HubCatalog) -> None:
    registry = _registry(hub_catalog)
    path = registry.pull("test/lora-tiny")
    blob_dir = Path(os.path.realpath(path)).parent
    leftover = blob_dir / "0123abcd.deadbeef.incomplete"
    leftover.write_bytes(b"partial")
    orphan = blob_dir / ("f" * 64)
    orphan.write_bytes(b"orphan")
    removed, freed = prune(registry.cache_dir)
    assert set(removed) == {leftover, orphan} and freed == len(b"partial") + len(b"orphan")
    assert registry.verify("test/lora-tiny").ok
