#!/usr/bin/env bash
# The main job: install the project, then use the CLI and the library for real.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/refiners --help
.venv/bin/refiners plugins
.venv/bin/python examples/quickstart.py
