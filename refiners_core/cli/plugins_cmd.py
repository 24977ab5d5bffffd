"""``refiners plugins [--json]``: every discovered plugin, what it adds, and why it was skipped."""

from __future__ import annotations

import json

import typer

from refiners_core.plugins import PluginReport, plugin_reports
from refiners_core.text import printable


def plugins(
    json_output: bool = typer.Option(False, "--json", help="Print a JSON document instead of text."),
) -> None:
    """List every discovered plugin: distribution, version, hooks, what it adds, status and reason."""
    from refiners_core import __version__

    reports = plugin_reports()
    if json_output:
        document = {"core_version": __version__, "plugins": [report.to_dict() for report in reports]}
        typer.echo(json.dumps(document, indent=2))
        return
    typer.echo(render_text(reports, __version__))


def render_text(reports: list[PluginReport], core_version: str) -> str:
    """Human-readable listing: a header line, then one block per plugin."""
    loaded = sum(report.loaded for report in reports)
    skipped = len(reports) - loaded
    lines = [f"refiners-core {core_version}: {len(reports)} plugin(s), {loaded} loaded, {skipped} skipped"]
    for report in reports:
        dist = f"{report.distribution} {report.version}" if report.distribution else "(no distribution)"
        lines.append("")
        lines.append(f"{report.name}  [{report.status}]  {dist}  ({report.entry_point})")
        if report.reason:
            lines.append(f"    reason: {report.reason}")
        details = {
            "hooks": report.hooks,
            "adapter families": report.adapter_families,
            "base models": report.base_models,
            "commands": report.commands,
        }
        for label, values in details.items():
            if values:
                lines.append(f"    {label}: {', '.join(values)}")
        if report.catalog_sources:
            lines.append(f"    catalog sources: {report.catalog_sources}")
        for problem in report.problems:
            lines.append(f"    problem: {problem}")
    if not reports:
        lines.append("")
        lines.append("No plugin found. Install one (`pip install refiners-lora`) or write one (`refiners plugin new`).")
    return "\n".join(printable(line) for line in lines)  # distribution metadata and messages are untrusted
