#!/usr/bin/env bash
# Install the project and its test dependencies, lint, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy refiners_core
# one call per package folder (each is its own top-level package)
.venv/bin/mypy registry/refiners_registry
.venv/bin/mypy refiners_plugins/sd/refiners_sd
.venv/bin/mypy refiners_plugins/lora/refiners_lora
.venv/bin/mypy refiners_plugins/controlnet/refiners_controlnet
.venv/bin/mypy refiners_plugins/t2i/refiners_t2i
.venv/bin/mypy refiners_plugins/ip_adapter/refiners_ip_adapter
.venv/bin/mypy refiners_plugins/train/refiners_train
.venv/bin/python -m pytest "$@"
