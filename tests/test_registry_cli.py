"""``refiners adapters ...`` and ``refiners cache ...`` in subprocesses, against a local Hub."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import registry_fixtures
from hub_fixtures import write_catalog
from registry_fixtures import HubCatalog, blobs, run_cli

hub_server = registry_fixtures.hub_server
hub_env = registry_fixtures.hub_env
hub_catalog = registry_fixtures.hub_catalog


def _popen(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "refiners_core.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def test_list_search_info(hub_catalog: HubCatalog) -> None:
    env = hub_catalog.env
    listed = run_cli(env, "adapters", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    entries = json.loads(listed.stdout)
    names = [e["name"] for e in entries]
    assert {"test/lora-tiny", "test/big", "test/pair", "sd15/controlnet-canny", "sdxl/lora-lcm"} <= set(names)
    tiny = next(e for e in entries if e["name"] == "test/lora-tiny")
    assert set(tiny) == {"name", "family", "base_model", "description", "license", "tags", "source"}
    assert set(tiny["source"]) == {"repo_id", "revision", "files"}
    assert set(tiny["source"]["files"][0]) == {"path", "sha256", "size"}

    only = json.loads(run_cli(env, "adapters", "list", "--family", "testlora", "--json").stdout)
    assert sorted(e["name"] for e in only) == ["test/big", "test/lora-tiny", "test/pair"]
    sdxl = json.loads(run_cli(env, "adapters", "list", "--base-model", "sdxl", "--json").stdout)
    assert sdxl and all(e["base_model"] == "sdxl" for e in sdxl)
    assert json.loads(run_cli(env, "adapters", "list", "--installed", "--json").stdout) == []

    table = run_cli(env, "adapters", "list", "--family", "testlora")
    assert table.returncode == 0 and "test/lora-tiny" in table.stdout

    found = json.loads(run_cli(env, "adapters", "search", "tiny", "--json").stdout)
    assert [e["name"] for e in found] == ["test/lora-tiny", "test/pair"]  # pair's repository is tiny-lora
    assert "sd15/controlnet-canny" in run_cli(env, "adapters", "search", "canny edge").stdout

    info = run_cli(env, "adapters", "info", "test/big", "--json")
    assert info.returncode == 0
    assert json.loads(info.stdout)["source"]["repo_id"] == "test-org/big"
    text = run_cli(env, "adapters", "info", "test/big")
    assert "test-org/big" in text.stdout and "not cached" in text.stdout
    assert hub_catalog.hub.requests == []  # listing never touches the network


def test_list_search_info_never_import_torch(hub_catalog: HubCatalog) -> None:
    script = (
        "import sys\n"
        "from refiners_core.cli.app import main\n"
        "for argv in (['adapters', 'list'], ['adapters', 'search', 'lora'], ['adapters', 'info', 'test/big'],\n"
        "             ['adapters', 'list', '--installed', '--json']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as exit:\n"
        "        assert not exit.code, exit.code\n"
        "print('torch' in sys.modules, 'huggingface_hub.file_download' in sys.modules, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=hub_catalog.env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "False False"


def test_pull_verify_remove(hub_catalog: HubCatalog) -> None:
    env = dict(hub_catalog.env, COLUMNS="30")  # a narrow terminal must not wrap the path
    pulled = run_cli(env, "adapters", "pull", "test/big")
    assert pulled.returncode == 0, pulled.stderr
    path = Path(pulled.stdout.splitlines()[-1])
    assert len(str(path)) > 30 and path.read_bytes() == hub_catalog.files["test/big"]
    assert "verifying sha256" in pulled.stderr

    listed = json.loads(run_cli(env, "adapters", "list", "--installed", "--json").stdout)
    assert [e["name"] for e in listed] == ["test/big"]
    assert str(path) in run_cli(env, "cache", "ls").stdout
    assert run_cli(env, "cache", "dir").stdout.strip() == str(Path(env["HF_HOME"]) / "hub")

    verified = run_cli(env, "adapters", "verify")
    assert verified.returncode == 0 and "ok" in verified.stdout and "test/big" in verified.stdout

    blob = Path(os.path.realpath(path))
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")
    bad = run_cli(env, "adapters", "verify", "test/big")
    assert bad.returncode == 5 and "MISMATCH" in bad.stdout

    removed = run_cli(env, "adapters", "remove", "test/big")
    assert removed.returncode == 0, removed.stderr
    assert not path.exists() and blobs(env, "test-org/big") == []
    assert run_cli(env, "adapters", "verify", "test/big").returncode == 6


def test_pull_to_local_dir(hub_catalog: HubCatalog, tmp_path: Path) -> None:
    out = tmp_path / "weights"
    pulled = run_cli(hub_catalog.env, "adapters", "pull", "test/lora-tiny", "--local-dir", str(out))
    assert pulled.returncode == 0, pulled.stderr
    assert Path(pulled.stdout.splitlines()[-1]) == out.resolve() / "lora.safetensors"


def test_tampered_file_rejected(hub_catalog: HubCatalog) -> None:
    repo_id, _, path = hub_catalog.repos["test/lora-tiny"]
    hub_catalog.hub.tamper(repo_id, path)
    pulled = run_cli(hub_catalog.env, "adapters", "pull", "test/lora-tiny")
    assert pulled.returncode == 5
    line = _one_error_line(pulled.stderr)
    assert "want " in line and "got " in line
    assert pulled.stdout == ""
    assert blobs(hub_catalog.env, repo_id) == []


def test_unknown_name(hub_catalog: HubCatalog) -> None:
    for command in ("info", "pull", "remove"):
        done = run_cli(hub_catalog.env, "adapters", command, "test/lora-tinny")
        assert done.returncode == 3
        assert "test/lora-tiny" in _one_error_line(done.stderr)


def test_offline_pull_from_cache(hub_catalog: HubCatalog) -> None:
    env = hub_catalog.env
    missing = run_cli(env, "adapters", "--offline", "pull", "test/lora-tiny")
    assert missing.returncode == 6 and "offline" in _one_error_line(missing.stderr)
    missing = run_cli(env, "--offline", "adapters", "pull", "test/lora-tiny")  # the global option
    assert missing.returncode == 6 and "offline" in _one_error_line(missing.stderr)
    assert hub_catalog.hub.count("GET", "lora.safetensors") == 0
    path = run_cli(env, "adapters", "pull", "test/lora-tiny").stdout.splitlines()[-1]
    hub_catalog.hub.stop()
    for args, extra in (
        (["adapters", "--offline", "pull", "test/lora-tiny"], {}),
        (["adapters", "pull", "test/lora-tiny", "--offline"], {}),
        (["adapters", "pull", "test/lora-tiny"], {"HF_HUB_OFFLINE": "1"}),
        (["--offline", "adapters", "pull", "test/lora-tiny"], {}),
    ):
        done = run_cli(dict(env, **extra), *args)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1] == path


def test_missing_repository_is_a_network_error(hub_catalog: HubCatalog, tmp_path: Path) -> None:
    entry = hub_catalog.entry("test/lora-tiny", name="test/gone")
    entry["source"]["repo_id"] = "test-org/gone"
    catalog = write_catalog(tmp_path / "gone.toml", [entry])
    env = dict(hub_catalog.env, REFINERS_CATALOG=os.pathsep.join([str(hub_catalog.catalog), str(catalog)]))
    done = run_cli(env, "adapters", "pull", "test/gone")
    assert done.returncode == 7
    assert "test-org/gone" in _one_error_line(done.stderr)


def test_bad_catalog_entries_are_reported_and_skipped(hub_catalog: HubCatalog, tmp_path: Path) -> None:
    good = hub_catalog.entry("test/lora-tiny", name="test/still-good")
    branch = hub_catalog.entry("test/lora-tiny", name="test/branch")
    branch["source"]["revision"] = "main"
    escape = hub_catalog.entry("test/lora-tiny", name="test/escape")
    escape["source"]["files"][0]["path"] = "../../etc/passwd"
    catalog = write_catalog(tmp_path / "mixed.toml", [branch, good, escape])
    env = dict(hub_catalog.env, REFINERS_CATALOG=str(catalog))
    done = run_cli(env, "adapters", "list", "--json")
    assert done.returncode == 0
    assert "test/still-good" in [e["name"] for e in json.loads(done.stdout)]
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2, done.stderr
    assert all(str(catalog) in line for line in warnings)
    assert "test/branch" in warnings[0] and "revision" in warnings[0]
    assert "test/escape" in warnings[1] and "path" in warnings[1]


def test_concurrent_pulls_both_succeed(hub_catalog: HubCatalog) -> None:
    repo_id, _, path = hub_catalog.repos["test/big"]
    gate = hub_catalog.hub.stall(repo_id, path, after=1 << 20)
    first = _popen(hub_catalog.env, "adapters", "pull", "test/big")
    second = _popen(hub_catalog.env, "adapters", "pull", "test/big")
    try:
        assert gate.reached.wait(30)
        time.sleep(0.5)  # let the other process reach the download lock
    finally:
        gate.release.set()
    outputs = [process.communicate(timeout=60) for process in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    paths = {stdout.splitlines()[-1] for stdout, _ in outputs}
    assert len(paths) == 1
    assert Path(paths.pop()).read_bytes() == hub_catalog.files["test/big"]
    assert hub_catalog.hub.count("GET", path) == 1  # the second waited for the first, then reused its blob


def test_killed_download_leaves_nothing_loadable(hub_catalog: HubCatalog) -> None:
    env = hub_catalog.env
    repo_id, _, path = hub_catalog.repos["test/big"]
    gate = hub_catalog.hub.stall(repo_id, path, after=1 << 20)
    process = _popen(env, "adapters", "pull", "test/big")
    try:
        assert gate.reached.wait(30)
        time.sleep(0.3)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        gate.release.set()
    assert all(blob.name.endswith(".incomplete") for blob in blobs(env, repo_id))
    assert run_cli(env, "adapters", "verify", "test/big").returncode == 6
    assert json.loads(run_cli(env, "adapters", "list", "--installed", "--json").stdout) == []
    pruned = run_cli(env, "cache", "prune")
    assert pruned.returncode == 0, pruned.stderr
    assert blobs(env, repo_id) == []
    retried = run_cli(env, "adapters", "pull", "test/big")
    assert retried.returncode == 0, retried.stderr
    assert Path(retried.stdout.splitlines()[-1]).read_bytes() == hub_catalog.files["test/big"]
