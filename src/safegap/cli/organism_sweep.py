"""``safegap organism sweep``: ReGap's dose-response (gap measures vs refusal over lambda)."""

from __future__ import annotations

from pathlib import Path

import typer

from safegap.cli.common import console, user_errors


def sweep(
    out: Path = typer.Option(
        ..., "--out", help="Output directory (sweep.json, sweep.md, sweep.png, points.jsonl)."
    ),
    reg: str = typer.Option("regap", "--reg", help="Regulariser to sweep (only regap is known)."),
    lambdas: str = typer.Option("0,0.1,0.3,1,3,10", "--lambda", help="Comma list of weights (0: plain)."),
    seeds: str = typer.Option("0,1,2,3,4", help="Comma list or range, e.g. 0,1,2 or 0-4."),
    regime: str = typer.Option("projector,full", help="Comma list: projector and/or full."),
    n_prompts: int = typer.Option(64, help="Held-out prompts per set and condition."),
    cache_dir: Path | None = typer.Option(
        None, help="Cache of bases and organisms (default ~/.cache/safegap/organism)."
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Build everything under OUT, reuse nothing."),
    scale: float = typer.Option(1.0, help="Multiply every stage's step count (quick runs)."),
    threads: int | None = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
) -> None:
    """Build one organism per seed and lambda; correlate MIR and co. with refusal. Resumable."""
    from safegap.cli.organism import check_run_options, progress_bar, set_threads
    from safegap.organism.build import default_cache_dir
    from safegap.organism.config import OrganismConfig
    from safegap.organism.regimes import parse_regimes
    from safegap.organism.study import parse_seeds
    from safegap.organism.sweep import SweepOptions, parse_lambdas, parse_reg, run_sweep

    with user_errors():
        check_run_options(n_prompts, scale)
        options = SweepOptions(
            lambdas=parse_lambdas(lambdas),
            seeds=parse_seeds(seeds),
            regimes=parse_regimes(regime),
            reg=parse_reg(reg),
            n_prompts=n_prompts,
            config=OrganismConfig().scaled(scale) if scale != 1.0 else OrganismConfig(),
            cache_dir=None if no_cache else (cache_dir or default_cache_dir()),
        )
        set_threads(threads)
        with progress_bar("organism sweep") as update:
            result = run_sweep(options, out, update)
    for regime_name, table in result["correlations"].items():
        entry = table["mir"]
        console.print(f"{regime_name}: Spearman(MIR, harmful refusal) = {entry['spearman']} {entry['ci']}")
    console.print(f"wrote {out / 'sweep.json'}, {out / 'sweep.md'} and {out / 'sweep.png'}")


def register(organism_app: typer.Typer) -> None:
    organism_app.command("sweep")(sweep)
