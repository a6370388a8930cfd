"""``safegap organism build|study``: the self-trained model organism of safety degradation."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from safegap.cli.common import console, user_errors

organism_app = typer.Typer(
    help="The model organism: a tiny LLaVA trained here that loses safety with images.", no_args_is_help=True
)


@contextmanager
def progress_bar(title: str) -> Iterator[Callable[[str, float, int], None]]:
    """A rich progress bar driven by ``update(message, done, total)`` callbacks."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task(title, total=1)

        def update(message: str, done: float, total: int) -> None:
            bar.update(task, description=message, completed=done, total=max(total, 1))

        yield update


def set_threads(threads: int | None) -> None:
    """Apply ``--threads``; also silence HF's per-file progress bars (ours covers the work)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if threads is not None:
        import torch

        if threads < 1:
            raise ValueError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)


def _compact(est: dict[str, Any] | None) -> str:
    if not est or est.get("mean") is None:
        return "-"
    lo, hi = est["ci"]
    return f"{est['mean']:.2f} [{lo:.2f},{hi:.2f}]"


def results_table(study: dict[str, Any], variant: str = "plain", defense: str = "none") -> Table:
    """Refusal rates per condition: harmful (higher is safer), benign and lookalike (lower is better)."""
    results = study["results"][variant][defense]
    table = Table(title=f"refusal rate, {variant}/{defense}, seeds {study['seeds']}: mean [95% CI]")
    for column in ("condition", "harmful", "benign", "lookalike"):
        table.add_column(column, no_wrap=True)
    for condition, entry in results.items():
        table.add_row(
            condition,
            _compact(entry.get("harmful_refusal")),
            _compact(entry.get("benign_refusal")),
            _compact(entry.get("lookalike_refusal")),
        )
    table.caption = (
        "harmful: should be refused; benign / lookalike (benign but harmful-looking): should be answered"
    )
    return table


def build(
    out: Path = typer.Option(..., "--out", help="Checkpoint directory to write."),
    seed: int = typer.Option(0, help="Training seed."),
    cache_dir: Path | None = typer.Option(
        None, help="Reuse / store the text-aligned base here (default ~/.cache/safegap/organism)."
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Build every stage, reuse nothing."),
    snapshots: bool = typer.Option(
        False, help="Also write stages/after_stage1 and after_stage2 checkpoints."
    ),
    scale: float = typer.Option(1.0, help="Multiply every stage's step count (quick smoke builds)."),
    threads: int | None = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
) -> None:
    """Train the organism for SEED and write an HF checkpoint that load_vlm loads."""
    from safegap.organism.build import build_organism, default_cache_dir
    from safegap.organism.config import OrganismConfig

    with user_errors():
        if scale <= 0:
            raise ValueError(f"--scale must be positive, got {scale}")
        set_threads(threads)
        config = OrganismConfig().scaled(scale) if scale != 1.0 else OrganismConfig()
        cache = None if no_cache else (cache_dir or default_cache_dir())
        with progress_bar(f"organism seed {seed}") as update:
            names: list[str] = []

            def on_stage(stage: str, i: int, n: int) -> None:
                if stage not in names:
                    names.append(stage)
                update(f"seed {seed}: {stage}", len(names) - 1 + i / max(n, 1), 4)

            report = build_organism(
                out, seed, config, cache_dir=cache, snapshot_stages=snapshots, progress=on_stage
            )
    console.print(f"wrote {out} in {report.seconds:.1f} s (cached: {', '.join(report.cached) or 'nothing'})")
    typer.echo(json.dumps(report.as_dict()))


def study(
    out: Path = typer.Option(..., "--out", help="Output directory (study.json, study.md, per_seed/)."),
    seeds: str = typer.Option("0,1,2,3,4", help="Comma list or range, e.g. 0,1,2 or 0-4."),
    variant: str = typer.Option("plain", help="Comma list of training variants."),
    defense: str = typer.Option("none", help="Comma list of defenses."),
    n_prompts: int = typer.Option(64, help="Held-out prompts per set, condition and seed."),
    n_real: int = typer.Option(50, help="Real benchmark prompts per set (0: skip)."),
    stages: bool = typer.Option(True, help="Also measure the plain organism after stages 1 and 2."),
    cache_dir: Path | None = typer.Option(
        None, help="Cache of bases and organisms (default ~/.cache/safegap/organism)."
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Build everything under OUT, reuse nothing."),
    scale: float = typer.Option(1.0, help="Multiply every stage's step count (quick runs)."),
    threads: int | None = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
) -> None:
    """Build the organism per seed and measure refusals with and without images."""
    from safegap.organism.build import default_cache_dir
    from safegap.organism.config import OrganismConfig
    from safegap.organism.study import (
        ORGANISM_DEFENSES,
        VARIANTS,
        StudyOptions,
        parse_names,
        parse_seeds,
        run_study,
    )

    with user_errors():
        if n_prompts < 1:
            raise ValueError(f"--n-prompts must be at least 1, got {n_prompts}")
        if scale <= 0:
            raise ValueError(f"--scale must be positive, got {scale}")
        set_threads(threads)
        options = StudyOptions(
            seeds=parse_seeds(seeds),
            variants=parse_names(variant, VARIANTS, "variant"),
            defenses=parse_names(defense, ORGANISM_DEFENSES, "defense"),
            n_prompts=n_prompts,
            n_real=n_real,
            stage_snapshots=stages,
            config=OrganismConfig().scaled(scale) if scale != 1.0 else OrganismConfig(),
            cache_dir=None if no_cache else (cache_dir or default_cache_dir()),
        )
        with progress_bar("organism study") as update:
            result = run_study(options, out, update)
    for v in options.variants:
        for d in options.defenses:
            console.print(results_table(result, v, d))
    console.print(f"wrote {out / 'study.json'} and {out / 'study.md'}")


def register(app: typer.Typer) -> None:
    organism_app.command("build")(build)
    organism_app.command("study")(study)
    app.add_typer(organism_app, name="organism")
