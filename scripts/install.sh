#!/usr/bin/env bash
# Create .venv and install every distribution of this repository in editable mode.
# torch is pinned and installed first: an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)

"${PIP[@]}" install "torch==2.13.0"

# the core first, then every plugin folder and the registry that has a pyproject.toml
projects=(-e .)
for folder in refiners_plugins/*/ registry/; do
    if [ -f "$folder/pyproject.toml" ]; then
        projects+=(-e "$folder")
    fi
done
"${PIP[@]}" install "${projects[@]}"

if [ "${1:-}" = "--test" ]; then
    "${PIP[@]}" install -r requirements-test.txt
fi
