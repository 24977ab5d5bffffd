"""``refiners generate`` finishes when a user catalog is unreadable: one warning line, then the image."""

from __future__ import annotations

from pathlib import Path

import test_generate_cli
from test_generate_cli import LORA, Served, generate

assets = test_generate_cli.assets
served = test_generate_cli.served
hub_server = test_generate_cli.hub_server
hub_env = test_generate_cli.hub_env


def test_generate_finishes_with_an_unreadable_user_catalog(served: Served) -> None:
    user = Path(served.env["XDG_CONFIG_HOME"]) / "refiners" / "catalog.toml"
    user.parent.mkdir(parents=True, exist_ok=True)
    user.write_bytes(b'[[adapter]]\nname = "caf\xe9"\n')
    output = served.root / "out.png"
    result = generate(served, "--lora", f"{LORA}:0.5", "-o", str(output))
    assert result.returncode == 0, result.stderr
    assert output.is_file() and result.stdout.splitlines()[-1] == str(output)
    warned = [line for line in result.stderr.splitlines() if "not UTF-8" in line]
    assert len(warned) == 1 and str(user) in warned[0], result.stderr
    assert "Traceback" not in result.stderr
