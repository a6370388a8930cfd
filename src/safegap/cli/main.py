"""The ``safegap`` command line. Each command group lives in its own module with a
``register(app)`` function; this file only assembles them. The library never imports the CLI."""

from __future__ import annotations

import typer

from safegap.cli import demo, eval, frontier, gap, info, organism, report, steer, train
from safegap.cli.common import OneLineGroup

app = typer.Typer(
    name="safegap",
    cls=OneLineGroup,
    help="Safety of vision-language models: modality gap, CMRM steering, ReGap/TGA training, evaluation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Safety of vision-language models (always a command group, even with one command)."""


for module in (info, steer, gap, train, eval, frontier, report, organism, demo):
    module.register(app)


def main() -> None:  # pragma: no cover - entry point
    app()
