"""Start-up time of the ``refiners`` CLI's light paths against a bare ``python -c pass``.

Usage: ``python bench/cli_startup.py [--runs N] [--compare PATH/TO/OTHER/refiners] [--as-is]``.

Each command is a fresh process, run N times after one warm-up (which also writes the bytecode of every
module it imports, under a temporary ``PYTHONPYCACHEPREFIX``, so that modules are not compiled from
source on every run even where ``PYTHONDONTWRITEBYTECODE`` is set, as on any machine where the CLI has
run once; ``--as-is`` keeps the caller's environment instead), all commands interleaved round by round
(so a burst of load on a shared machine hits every row alike). The table gives the median wall time,
and the median CPU time (user + system of the child process), each with its overhead above bare
Python. On a quiet machine both agree; on a loaded one wall time mostly measures waiting for a core,
so compare CPU times there. Rows:

- ``import typer`` / ``import typer, pydantic``: the floor every typer CLI pays (typer 0.2x validates
  parameter values through pydantic, imported on the first command line parsed);
- ``refiners --version``: answered before any plugin is loaded;
- ``refiners --help``: discover and import every installed plugin (entry points of group ``refiners``),
  build the command tree, parse the command line with typer (so pydantic is imported), run;
- ``refiners plugins [--json]``, ``refiners adapters list``: the same discovery, import and command tree
  (typer is imported: plugins add their commands to a typer app), but the command line is read by the
  direct route of ``refiners_core.cli.fast_path``, so pydantic is not imported. Other command lines of
  these commands (``--help``, a root option, anything not understood) go through typer and cost what
  ``--help`` costs.

``--compare`` adds the same refiners rows for another installation (e.g. the previous checkout's
``.venv/bin/refiners``), measured in the same rounds. Target: ``refiners plugins`` and
``refiners adapters list`` at most 0.15 s above bare Python on a quiet machine. Informative only.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_OVERHEAD_S = 0.15
REFINERS_ARGS = (["--version"], ["--help"], ["plugins"], ["plugins", "--json"], ["adapters", "list"])


def refiners_command() -> list[str]:
    """The installed ``refiners`` script next to this interpreter, else ``python -m refiners_core.cli``."""
    script = Path(sys.executable).with_name("refiners")
    if script.exists():
        return [str(script)]
    found = shutil.which("refiners")
    return [found] if found else [sys.executable, "-m", "refiners_core.cli"]


def run_once(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one run of ``command`` (output discarded; it must succeed)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, capture_output=True, check=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="runs per command (default 20)")
    parser.add_argument("--compare", type=Path, default=None, help="another refiners script to measure alongside")
    parser.add_argument("--as-is", action="store_true", help="keep the environment's bytecode settings")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cli-startup-pyc-") as pycache:
        env = dict(os.environ)
        if not options.as_is:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = pycache
        measure(options, env)


def measure(options: argparse.Namespace, env: dict[str, str]) -> None:
    """Run every command ``options.runs`` times, interleaved, and print the table."""
    commands: dict[str, list[str]] = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python: import typer": [sys.executable, "-c", "import typer"],
        "python: import typer, pydantic": [sys.executable, "-c", "import typer, pydantic"],
    }
    installations = {"": refiners_command()}
    if options.compare is not None:
        installations["(compared) "] = [str(options.compare)]
    for prefix, refiners in installations.items():
        for args in REFINERS_ARGS:
            commands[f"{prefix}refiners {' '.join(args)}"] = [*refiners, *args]
    walls: dict[str, list[float]] = {label: [] for label in commands}
    cpus: dict[str, list[float]] = {label: [] for label in commands}
    for command in commands.values():
        run_once(command, env)  # warm-up: bytecode caches, page cache
    for _ in range(options.runs):
        for label, command in commands.items():
            wall, cpu = run_once(command, env)
            walls[label].append(wall)
            cpus[label].append(cpu)
    base_wall = statistics.median(walls["python -c pass"])
    base_cpu = statistics.median(cpus["python -c pass"])
    bytecode = "environment as is" if options.as_is else "bytecode cached by the warm-up"
    print(f"{options.runs} interleaved runs each, medians, {bytecode}; {' '.join(installations[''])}")
    print(f"{'command':<40}{'wall (s)':>10}{'over python':>13}{'cpu (s)':>10}{'over python':>13}")
    for label in commands:
        wall, cpu = statistics.median(walls[label]), statistics.median(cpus[label])
        print(f"{label:<40}{wall:>10.3f}{wall - base_wall:>13.3f}{cpu:>10.3f}{cpu - base_cpu:>13.3f}")
    print(f"target: refiners plugins / adapters list at most {TARGET_OVERHEAD_S:.2f} s over python -c pass")


if __name__ == "__main__":
    main()
