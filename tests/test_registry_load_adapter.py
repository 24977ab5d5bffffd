"""``load_adapter`` end to end: catalog name -> local Hub -> sha256 check -> family plugin -> injected adapter."""

from __future__ import annotations

import hashlib

import pytest
import registry_fixtures
import torch
from hub_fixtures import write_catalog
from refiners_registry import MissingPluginError, PickleNotAllowedError, Registry, UnknownEntryError, load_adapter
from registry_fixtures import HubCatalog, run_cli

import refiners_core as rc

hub_server = registry_fixtures.hub_server
hub_env = registry_fixtures.hub_env
hub_catalog = registry_fixtures.hub_catalog


def _model() -> rc.Chain:
    torch.manual_seed(0)
    return rc.Chain(rc.Linear(64, 64))


def test_load_adapter_from_catalog_name(hub_catalog: HubCatalog) -> None:
    model = _model()
    x = torch.randn(2, 64)
    before = model(x)
    registry = Registry(endpoint=hub_catalog.hub.url)
    adapter = load_adapter(model, "test/lora-tiny", registry=registry, scale=0.5)
    assert adapter.is_injected and adapter.parent is model
    tensors = registry.load("test/lora-tiny")
    expected = before + 0.5 * (x @ tensors["down.weight"].T @ tensors["up.weight"].T)
    assert torch.allclose(model(x), expected, atol=1e-5)
    adapter.eject()
    assert torch.equal(model(x), before)


def test_load_adapter_from_local_file_with_alias(hub_catalog: HubCatalog) -> None:
    path = Registry(endpoint=hub_catalog.hub.url).pull("test/lora-tiny")
    model = _model()
    with pytest.raises(rc.RefinersError, match="name the family"):  # the test family has no detect hook
        load_adapter(model, str(path))
    adapter = load_adapter(model, path, family="testlora-alias")
    assert adapter.is_injected


def test_missing_family_plugin(hub_catalog: HubCatalog, tmp_path) -> None:  # type: ignore[no-untyped-def]
    orphan = hub_catalog.entry("test/lora-tiny", name="test/orphan", family="nofamily")
    needs = hub_catalog.entry("test/lora-tiny", name="test/needs", requires="refiners-not-installed>=1")
    catalog = write_catalog(tmp_path / "more.toml", [orphan, needs])
    registry = Registry(endpoint=hub_catalog.hub.url, catalogs=[catalog])
    with pytest.raises(MissingPluginError, match="nofamily"):
        load_adapter(_model(), "test/orphan", registry=registry)
    with pytest.raises(MissingPluginError, match="pip install 'refiners-not-installed>=1'"):
        load_adapter(_model(), "test/needs", registry=registry)
    assert hub_catalog.hub.requests == []  # refused before any download

    env = dict(hub_catalog.env, REFINERS_CATALOG=str(catalog))
    done = run_cli(env, "adapters", "pull", "test/orphan")
    assert done.returncode == 4 and done.stderr.count("Error: ") == 1
    forced = run_cli(env, "adapters", "pull", "test/orphan", "--skip-plugin-check")
    assert forced.returncode == 0, forced.stderr


def test_unknown_name_or_missing_file(hub_catalog: HubCatalog) -> None:
    with pytest.raises(UnknownEntryError):
        load_adapter(_model(), "test/nothing-like-this", registry=Registry(endpoint=hub_catalog.hub.url))


def test_pickle_needs_both_opt_ins(hub_catalog: HubCatalog, tmp_path) -> None:  # type: ignore[no-untyped-def]
    pickled = tmp_path / "weights.bin"
    torch.save({"down.weight": torch.zeros(2, 64), "up.weight": torch.zeros(64, 2)}, pickled)
    with pytest.raises(PickleNotAllowedError):
        load_adapter(_model(), pickled, family="testlora")
    # the user's opt-in reaches the family loader, which would refuse the pickle by itself otherwise
    assert load_adapter(_model(), pickled, family="testlora", allow_pickle=True).is_injected

    data = pickled.read_bytes()
    revision = hub_catalog.hub.add_repo("test-org/pickled", {"weights.bin": data})
    entry = hub_catalog.entry("test/lora-tiny", name="test/pickled", allow_pickle=True)
    entry["source"] = {
        "repo_id": "test-org/pickled",
        "revision": revision,
        "files": [{"path": "weights.bin", "sha256": hashlib.sha256(data).hexdigest()}],
    }
    registry = Registry(endpoint=hub_catalog.hub.url, catalogs=[write_catalog(tmp_path / "p.toml", [entry])])
    with pytest.raises(PickleNotAllowedError):
        registry.pull("test/pickled")
    assert hub_catalog.hub.count("GET", "weights.bin") == 0
    assert registry.load("test/pickled", allow_pickle=True)["up.weight"].shape == (64, 2)
    assert load_adapter(_model(), "test/pickled", registry=registry, allow_pickle=True).is_injected
