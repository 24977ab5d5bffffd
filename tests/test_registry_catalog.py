"""Catalog schema, validation and the merging of sources (no network, no torch)."""

from __future__ import annotations

import copy
import os
import tomllib
import warnings
from pathlib import Path
from typing import Any

import pytest
from hub_fixtures import write_catalog
from refiners_registry import CatalogWarning, Registry
from refiners_registry.catalog import CatalogError, entry_from_mapping, read_catalog_file, validate_relative_path
from refiners_registry.sources import bundled_catalog_path

SHA = "ab" * 32
COMMIT = "0123456789abcdef0123456789abcdef01234567"
VALID: dict[str, Any] = {
    "name": "sd15/lora-test",
    "family": "lora",
    "base_model": "sd15",
    "description": "a test",
    "license": "mit",
    "tags": ["a", "b"],
    "requires": "refiners-lora>=0.1",
    "source": {"repo_id": "org/repo", "revision": COMMIT, "files": [{"path": "dir/w.safetensors", "sha256": SHA}]},
}


def _with(**changes: Any) -> dict[str, Any]:
    entry = copy.deepcopy(VALID)
    for dotted, value in changes.items():
        target = entry
        *parents, key = dotted.split("__")
        for parent in parents:
            target = target[parent] if parent != "file" else target["files"][0]
        if value is ...:
            del target[key]
        else:
            target[key] = value
    return entry


@pytest.fixture(autouse=True)
def _no_user_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("REFINERS_CATALOG", raising=False)


def test_valid_entry_round_trips() -> None:
    entry = entry_from_mapping(VALID, origin="x.toml")
    assert entry.to_dict() == VALID
    assert entry.source.files[0].size is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "SD15/Upper"}, "name"),
        ({"name": "a//b"}, "name"),
        ({"name": ...}, "name"),
        ({"family": ""}, "family"),
        ({"description": 3}, "description"),
        ({"tags": "x"}, "tags"),
        ({"requires": "not a requirement!!"}, "requires"),
        ({"colour": "red"}, "unknown key"),
        ({"source__revision": "main"}, "revision"),
        ({"source__revision": COMMIT.upper()}, "revision"),
        ({"source__repo_id": "../x"}, "repo_id"),
        ({"source__files": []}, "files"),
        ({"source__file__path": "../../etc/passwd"}, "path"),
        ({"source__file__path": "/etc/passwd"}, "path"),
        ({"source__file__path": "C:/x.safetensors"}, "path"),
        ({"source__file__path": "a\\b.safetensors"}, "path"),
        ({"source__file__path": "a/./b.safetensors"}, "path"),
        ({"source__file__sha256": "zz" * 32}, "sha256"),
        ({"source__file__sha256": SHA[:-1]}, "sha256"),
        ({"source__file__size": -1}, "size"),
        ({"source__file__size": True}, "size"),
        ({"source__file__path": "pytorch_lora_weights.bin"}, "allow_pickle"),
    ],
)
def test_invalid_fields_are_rejected(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        entry_from_mapping(_with(**changes))


def test_pickle_needs_the_entry_opt_in() -> None:
    entry = entry_from_mapping(_with(source__file__path="w.ckpt", allow_pickle=True))
    assert entry.has_pickle and entry.allow_pickle


@pytest.mark.parametrize("path", ["a.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors", "x/y z.json"])
def test_relative_paths_accepted(path: str) -> None:
    assert validate_relative_path(path) == path


def test_bad_entries_are_reported_with_file_and_name_and_skipped(tmp_path: Path) -> None:
    catalog = write_catalog(
        tmp_path / "c.toml",
        [_with(name="test/bad", source__revision="main"), _with(name="test/good"), _with(name="test/good")],
    )
    entries, issues = read_catalog_file(catalog)
    assert [e.name for e in entries] == ["test/good"]
    assert [(i.origin, i.name) for i in issues] == [(str(catalog), "test/bad"), (str(catalog), "test/good")]
    assert "duplicate" in issues[1].message


def test_unreadable_catalog_is_one_issue(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[[adapter]\nname = ", encoding="utf-8")
    assert read_catalog_file(broken)[1][0].message.startswith("invalid TOML")
    assert "cannot read" in read_catalog_file(tmp_path / "absent.toml")[1][0].message


def test_sources_merge_in_order_and_shadowing_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = write_catalog(tmp_path / "config" / "refiners" / "catalog.toml", [_with(name="test/mine")])
    first = write_catalog(tmp_path / "one.toml", [_with(name="sdxl/lora-lcm", description="my own lcm")])
    second = write_catalog(tmp_path / "two.toml", [_with(name="test/mine", description="second")])
    monkeypatch.setenv("REFINERS_CATALOG", os.pathsep.join([str(first), str(second)]))
    with pytest.warns(CatalogWarning) as caught:
        registry = Registry(plugins=False)
    messages = [str(w.message) for w in caught]
    assert any("sdxl/lora-lcm" in m and "shadows" in m and "catalog.toml" in m for m in messages)
    assert any("test/mine" in m and str(user) in m for m in messages)
    assert registry.get("sdxl/lora-lcm").description == "my own lcm"
    assert registry.get("test/mine").description == "second"


def test_plugin_sources_paths_and_mappings(make_plugin_dist: Any, tmp_path: Path) -> None:
    extra = write_catalog(tmp_path / "plugin.toml", [_with(name="test/from-file")])
    sources = [str(extra), _with(name="test/from-mapping"), {"name": "test/broken"}]
    source = (
        f"from refiners_core import hookimpl\n\n@hookimpl\ndef refiners_catalog_entries():\n    return {sources!r}\n"
    )
    make_plugin_dist("refiners-cataloged", source.replace("{", "{{").replace("}", "}}"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry = Registry()
    assert registry.get("test/from-file").origin == str(extra)
    assert registry.get("test/from-mapping").origin == "plugin cataloged"
    assert "test/broken" not in registry.entries
    assert any("plugin cataloged" in str(w.message) and "test/broken" in str(w.message) for w in caught)
    assert "sd15/controlnet-canny" in registry.entries  # the bundled catalog is read once, first


def test_bundled_catalog_is_valid_and_covers_every_family() -> None:
    entries, issues = read_catalog_file(bundled_catalog_path())
    assert issues == []
    families = {e.family for e in entries}
    assert families == {"lora", "controlnet", "t2i", "ip-adapter", "base-model"}
    assert all(f.path.endswith(".safetensors") for e in entries for f in e.source.files)
    requires = {"lora": "refiners-lora", "controlnet": "refiners-controlnet", "t2i": "refiners-t2i"}
    requires |= {"ip-adapter": "refiners-ip-adapter", "base-model": "refiners-sd"}
    assert all(e.requires is not None and e.requires.startswith(requires[e.family]) for e in entries)
    facts_path = Path(__file__).resolve().parents[2] / "shared" / "hub_facts.toml"
    if not facts_path.is_file():
        pytest.skip("../shared/hub_facts.toml is not available")
    facts = tomllib.loads(facts_path.read_text(encoding="utf-8"))["file"]
    pinned = {(f["repo_id"], f["path"]): (f["revision"], f["sha256"]) for f in facts}
    for entry in entries:
        file = entry.source.files[0]
        assert pinned[(entry.source.repo_id, file.path)] == (entry.source.revision, file.sha256), entry.name


def test_search_and_filters() -> None:
    registry = Registry(plugins=False, user=False)
    assert [e.name for e in registry.search("ip-adapter plus sdxl")] == ["sdxl/ip-adapter-plus-vit-h"]
    assert {e.family for e in registry.list(base_model="sd15")} >= {"controlnet", "ip-adapter", "base-model"}
    assert all(e.family == "lora" for e in registry.list(family="lora"))
