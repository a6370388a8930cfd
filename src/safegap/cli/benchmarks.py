"""``safegap benchmarks``: every benchmark name, where its files go, its conditions and options."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from safegap.cli.common import user_errors


def benchmark_infos(names: list[str] | None = None) -> list[dict[str, Any]]:
    """:meth:`~safegap.data.benchmarks.base.Benchmark.info` of ``names`` (default: all), in
    name order; an unknown name is the same one-line error as ``--bench`` gives."""
    from safegap.data.benchmarks import BENCHMARKS
    from safegap.data.benchmarks.base import unknown_benchmark

    for name in names or []:
        if name not in BENCHMARKS:
            raise unknown_benchmark(name)
    return [BENCHMARKS[name].info() for name in (names or list(BENCHMARKS))]


def benchmark_table(info: dict[str, Any]) -> Table:
    """One benchmark as label / value rows (readable at 80 columns: values wrap, labels do not)."""
    table = Table.grid(padding=(0, 2))
    table.add_column(no_wrap=True, style="bold")
    table.add_column(overflow="fold")
    table.add_row(info["name"], info["description"])
    table.add_row("files", info["layout"] or "-")
    defaults = set(info["default_conditions"])
    table.add_row("conditions", ", ".join(c + ("*" if c in defaults else "") for c in info["conditions"]))
    options = info["options"]
    if not options:
        table.add_row("options", "none")
    for i, (key, text) in enumerate(options.items()):
        table.add_row("options" if i == 0 else "", f"{key}=  {text}" if text else f"{key}=")
    return table


def benchmarks_command(
    names: list[str] = typer.Argument(None, help="Benchmark name(s) to show (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (a list of objects) instead."),
) -> None:
    """List benchmarks for --bench NAME[:PATH][,key=value]: files, conditions (* = default), options."""
    with user_errors():
        infos = benchmark_infos(names or None)
    if as_json:
        typer.echo(json.dumps(infos, indent=2))
        return
    console = Console()
    for info in infos:
        console.print(benchmark_table(info), highlight=False)
        console.print()
    console.print(
        "Files are found under --data-dir (or $SAFEGAP_DATA); NAME:PATH points at another file. "
        "* marks the conditions run when --condition is not given.",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command("benchmarks")(benchmarks_command)
