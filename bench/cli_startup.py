"""Startup time of the ``refiners`` CLI's light paths against a bare ``python -c pass``.

Usage: ``python bench/cli_startup.py [--runs N]``. Prints the median wall time of each command
over N runs and its overhead above bare Python. Target: ``refiners plugins`` under 0.3 s above
bare Python. Informative only: nothing here fails on a slow machine.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_OVERHEAD_S = 0.3


def refiners_command() -> list[str]:
    """The installed ``refiners`` script next to this interpreter, else ``python -m refiners_core.cli``."""
    script = Path(sys.executable).with_name("refiners")
    if script.exists():
        return [str(script)]
    found = shutil.which("refiners")
    return [found] if found else [sys.executable, "-m", "refiners_core.cli"]


def median_wall_time(command: list[str], runs: int) -> float:
    """Median wall time in seconds of ``command`` over ``runs`` runs (after one warm-up run)."""
    subprocess.run(command, capture_output=True, check=True)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="runs per command (default 20)")
    runs = parser.parse_args().runs
    refiners = refiners_command()
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "refiners --version": [*refiners, "--version"],
        "refiners --help": [*refiners, "--help"],
        "refiners plugins": [*refiners, "plugins"],
        "refiners plugins --json": [*refiners, "plugins", "--json"],
    }
    baseline = None
    print(f"median of {runs} runs, {' '.join(refiners)}")
    print(f"{'command':<26}{'median (s)':>12}{'over python (s)':>18}")
    for label, command in commands.items():
        median = median_wall_time(command, runs)
        baseline = median if baseline is None else baseline
        print(f"{label:<26}{median:>12.3f}{median - baseline:>18.3f}")
    print(f"target: refiners plugins under {TARGET_OVERHEAD_S:.1f} s over python -c pass")


if __name__ == "__main__":
    main()
