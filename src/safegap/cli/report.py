"""``safegap report RUN_DIR``: one self-contained HTML page for an evaluation run."""

from __future__ import annotations

import typer

from safegap.cli.common import console, user_errors


def report_command(
    run_dir: str = typer.Argument(..., help="Run directory written by `safegap eval`."),
    out: str | None = typer.Option(None, "--out", help="HTML file (default: RUN_DIR/report.html)."),
    max_samples: int = typer.Option(
        5000, "--max-samples", min=0, help="Most samples shown in the browser table."
    ),
) -> None:
    """Write RUN_DIR/report.html: tables, per-category plots, alpha sweeps, sample browser."""
    from safegap.report import write_report

    with user_errors():
        path = write_report(run_dir, out, max_samples=max_samples)
    console.print(f"wrote {path}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)
