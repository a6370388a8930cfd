"""``safegap info MODEL``: family, layer count, hidden size and image-token id."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from safegap.cli.common import user_errors


def info(
    model: str = typer.Argument(..., help="Local checkpoint directory or hub id."),
    layers_path: str | None = typer.Option(
        None, help="Dotted path to the decoder layers (unknown families)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Print what safegap knows about MODEL."""
    from safegap.models import load_vlm

    with user_errors():
        vlm = load_vlm(model, layers_path=layers_path)
    facts = vlm.adapter.describe()
    if as_json:
        typer.echo(json.dumps(facts))
        return
    table = Table(title=model, show_header=False)
    for key, value in facts.items():
        table.add_row(key, str(value))
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("info")(info)
