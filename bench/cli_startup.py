"""Start-up time of the ``refiners`` CLI's light paths against a bare ``python -c pass``.

Usage: ``python bench/cli_startup.py [--runs N] [--compare PATH/TO/OTHER/refiners]``.

Each command is a fresh process, run N times after one warm-up, all commands interleaved round by round
(so a burst of load on a shared machine hits every row alike). The table gives the median wall time,
and the median CPU time (user + system of the child process), each with its overhead above bare
Python. On a quiet machine both agree; on a loaded one wall time mostly measures waiting for a core,
so compare CPU times there. Rows:

- ``import typer`` / ``import typer, pydantic``: the floor every typer CLI pays (typer 0.2x validates
  parameter values through pydantic, imported on the first command line parsed);
- ``refiners --version``: answered before any plugin is loaded;
- ``refiners --help``, ``refiners plugins [--json]``, ``refiners adapters list``: discover and import every
  installed plugin (entry points of group ``refiners``), build the command tree, run.

``--compare`` adds the same refiners rows for another installation (e.g. the previous checkout's
``.venv/bin/refiners``), measured in the same rounds. Target: ``refiners plugins`` and
``refiners adapters list`` at most 0.15 s above bare Python on a quiet machine. Informative only.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
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


def run_once(command: list[str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one run of ``command`` (output discarded; it must succeed)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, capture_output=True, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="runs per command (default 20)")
    parser.add_argument("--compare", type=Path, default=None, help="another refiners script to measure alongside")
    options = parser.parse_args()
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
        run_once(command)  # warm-up: bytecode caches, page cache
    for _ in range(options.runs):
        for label, command in commands.items():
            wall, cpu = run_once(command)
            walls[label].append(wall)
            cpus[label].append(cpu)
    base_wall = statistics.median(walls["python -c pass"])
    base_cpu = statistics.median(cpus["python -c pass"])
    print(f"{options.runs} interleaved runs each, medians; {' '.join(installations[''])}")
    print(f"{'command':<40}{'wall (s)':>10}{'over python':>13}{'cpu (s)':>10}{'over python':>13}")
    for label in commands:
        wall, cpu = statistics.median(walls[label]), statistics.median(cpus[label])
        print(f"{label:<40}{wall:>10.3f}{wall - base_wall:>13.3f}{cpu:>10.3f}{cpu - base_cpu:>13.3f}")
    print(f"target: refiners plugins / adapters list at most {TARGET_OVERHEAD_S:.2f} s over python -c pass")


if __name__ == "__main__":
    main()
