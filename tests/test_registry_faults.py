"""Registry fault injection: wrong catalog hashes, shared blobs, links out of the cache, local I/O errors, sizes."""

from __future__ import annotations

import errno
import hashlib
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import registry_fixtures
from hub_fixtures import write_catalog
from refiners_registry import (
    HashMismatchError,
    LocalIOError,
    NetworkError,
    Registry,
    SizeExceededError,
)
from registry_fixtures import HubCatalog, blobs, run_cli

hub_server = registry_fixtures.hub_server
hub_env = registry_fixtures.hub_env
hub_catalog = registry_fixtures.hub_catalog

WRONG = "0" * 64


def _registry(hub: HubCatalog, **kwargs: object) -> Registry:
    return Registry(endpoint=hub.hub.url, plugins=False, **kwargs)  # type: ignore[arg-type]


def _add_wrong_entry(hub: HubCatalog, name: str = "test/wrong-hash", served: str = "test/lora-tiny") -> None:
    """A second catalog (in ``REFINERS_CATALOG``) with an entry for ``served``'s file under a wrong sha256."""
    entry = hub.entry(served, name=name)
    entry["source"]["files"][0]["sha256"] = WRONG
    extra = write_catalog(hub.catalog.parent / "wrong.toml", [entry])
    value = os.pathsep.join([str(hub.catalog), str(extra)])
    os.environ["REFINERS_CATALOG"] = value
    hub.env["REFINERS_CATALOG"] = value


def test_wrong_hash_never_deletes_a_shared_blob(hub_catalog: HubCatalog) -> None:
    """A blob shared by two entries and a plain hf_hub_download call survives a wrong hash in a third entry."""
    from huggingface_hub import hf_hub_download

    repo_id, revision, path = hub_catalog.repos["test/lora-tiny"]
    data = hub_catalog.files["test/lora-tiny"]
    plain = Path(hf_hub_download(repo_id, path, revision=revision, endpoint=hub_catalog.hub.url))
    registry = _registry(hub_catalog)
    registry.pull("test/lora-tiny")
    registry.pull("test/pair")
    _add_wrong_entry(hub_catalog)
    registry = _registry(hub_catalog, offline=True)
    with pytest.raises(HashMismatchError) as caught:
        registry.pull("test/wrong-hash")
    assert caught.value.want == WRONG and caught.value.got == hashlib.sha256(data).hexdigest()
    assert "intact" in str(caught.value) and "kept" in str(caught.value)
    # the file downloaded by huggingface_hub itself and both other entries are intact and usable
    assert plain.read_bytes() == data
    assert registry.verify("test/lora-tiny").ok and registry.verify("test/pair").ok
    assert registry.load("test/lora-tiny")["down.weight"].shape == (8, 64)
    assert registry.pull("test/pair").is_dir()
    assert len(blobs(hub_catalog.env, repo_id)) == 2  # lora.safetensors and config.json
    # the CLI says the same: exit 5, one error line, the other entries still verify
    result = run_cli(hub_catalog.env, "--offline", "adapters", "pull", "test/wrong-hash")
    assert result.returncode == 5 and result.stderr.count("Error:") == 1, result.stderr
    verified = run_cli(hub_catalog.env, "adapters", "verify", "test/lora-tiny", "test/pair")
    assert verified.returncode == 0, verified.stderr


def test_concurrent_pulls_with_a_wrong_hash_never_lose_the_file(hub_catalog: HubCatalog) -> None:
    """Pulls of the genuine entry running next to pulls of a wrong-hash entry always get an existing file."""
    _add_wrong_entry(hub_catalog)
    env = hub_catalog.env
    processes = []
    for index in range(6):
        name = "test/wrong-hash" if index % 2 else "test/lora-tiny"
        command = [sys.executable, "-m", "refiners_core.cli", "adapters", "pull", name]
        processes.append((name, subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
    for name, process in processes:
        out, err = process.communicate(timeout=120)
        text = err.decode()
        assert "Traceback" not in text and "FileNotFoundError" not in text, text
        if name == "test/lora-tiny":
            assert process.returncode == 0, text
            local = Path(out.decode().strip().splitlines()[-1])
            assert local.read_bytes() == hub_catalog.files["test/lora-tiny"]
        else:
            assert process.returncode == 5, text
    assert _registry(hub_catalog).verify("test/lora-tiny").ok


def test_mismatch_never_follows_a_link_out_of_the_cache(hub_catalog: HubCatalog, tmp_path: Path) -> None:
    """A snapshot link pointing at a user file (shared HF_HOME) is removed; the user file is not touched."""
    repo_id, revision, path = hub_catalog.repos["test/lora-tiny"]
    victim = tmp_path / "precious.txt"
    victim.write_bytes(b"my thesis")
    storage = Path(hub_catalog.env["HF_HOME"]) / "hub" / ("models--" + repo_id.replace("/", "--"))
    pointer = storage / "snapshots" / revision / path
    pointer.parent.mkdir(parents=True)
    (storage / "blobs").mkdir()
    pointer.symlink_to(victim)
    with pytest.raises(HashMismatchError) as caught:
        _registry(hub_catalog, offline=True).pull("test/lora-tiny")
    assert "outside the cache" in str(caught.value)
    assert victim.read_bytes() == b"my thesis"
    assert not pointer.is_symlink()


def test_tampered_file_in_read_only_cache_is_a_mismatch(
    hub_catalog: HubCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = _registry(hub_catalog)
    local = registry.pull("test/lora-tiny")
    blob = Path(os.path.realpath(local))
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))

    def read_only(self: Path, missing_ok: bool = False) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(HashMismatchError) as caught:
        _registry(hub_catalog, offline=True).pull("test/lora-tiny")
    assert "could not be removed" in str(caught.value) and "Read-only" in str(caught.value)


def test_full_disk_is_a_local_error(hub_catalog: HubCatalog, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.file_download as file_download

    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(file_download, "http_get", no_space)
    with pytest.raises(LocalIOError) as caught:
        _registry(hub_catalog).pull("test/lora-tiny")
    assert not isinstance(caught.value, NetworkError) and "No space left" in str(caught.value)
    assert caught.value.exit_code == 9


def _limit_file_size() -> None:  # runs in the child before exec
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


def test_file_size_limit_and_local_dir_file_exit_9(hub_catalog: HubCatalog, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "refiners_core.cli", "adapters", "pull", "test/big"]
    limited = subprocess.run(
        command, env=hub_catalog.env, capture_output=True, text=True, timeout=120, preexec_fn=_limit_file_size
    )
    assert limited.returncode == 9, limited.stderr
    assert limited.stderr.count("Error:") == 1 and "Traceback" not in limited.stderr
    assert "too large" in limited.stderr.lower()
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("x")
    result = run_cli(hub_catalog.env, "adapters", "pull", "test/lora-tiny", "--local-dir", str(not_a_folder))
    assert result.returncode == 9, result.stderr
    assert result.stderr.count("Error:") == 1 and "not a folder" in result.stderr
    assert not_a_folder.read_text() == "x"


def test_download_past_catalog_size_is_stopped(hub_catalog: HubCatalog) -> None:
    repo_id, _, path = hub_catalog.repos["test/big"]
    size = len(hub_catalog.files["test/big"])
    # a catalog size smaller than what the Hub announces is refused before any byte is written
    entry = hub_catalog.entry("test/big", name="test/small-size")
    entry["source"]["files"][0]["size"] = 1000
    write_catalog(hub_catalog.catalog, [hub_catalog.entry("test/big"), entry])
    with pytest.raises(SizeExceededError) as caught:
        _registry(hub_catalog).pull("test/small-size")
    assert caught.value.limit == 1000 and caught.value.got == size
    assert all(blob.stat().st_size == 0 for blob in blobs(hub_catalog.env, repo_id))
    # a body running past the announced (and catalog) size is cut, not written to the end
    hub_catalog.hub.oversize(repo_id, path, extra=64 << 20)
    with pytest.raises(SizeExceededError) as caught:
        _registry(hub_catalog).pull("test/big")
    assert caught.value.limit == size and caught.value.got > size
    assert all(blob.stat().st_size < size + (32 << 20) for blob in blobs(hub_catalog.env, repo_id))
    hub_catalog.hub.clear_faults()
    registry_fixtures_prune(hub_catalog)
    assert _registry(hub_catalog).pull("test/big").stat().st_size == size


def registry_fixtures_prune(hub: HubCatalog) -> None:
    """Remove the partial download the stopped transfer left (what ``refiners cache prune`` does)."""
    from refiners_registry.cache import prune

    prune(Path(hub.env["HF_HOME"]) / "hub")
