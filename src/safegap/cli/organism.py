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


def check_run_options(n_prompts: int, scale: float) -> None:
    """One-line errors for the options every organism run takes."""
    if n_prompts < 1:
        raise ValueError(f"--n-prompts must be at least 1, got {n_prompts}")
    if scale <= 0:
        raise ValueError(f"--scale must be positive, got {scale}")


def _compact(est: dict[str, Any] | None) -> str:
    if not est or est.get("mean") is None:
        return "-"
    lo, hi = est["ci"]
    return f"{est['mean']:.2f} [{lo:.2f},{hi:.2f}]"


def results_table(
    study: dict[str, Any], variant: str = "plain", defense: str = "none", regime: str = "full"
) -> Table:
    """Refusal rates per condition: harmful (higher is safer), benign and lookalike (lower is better)."""
    results = study["results"][regime][variant][defense]
    table = Table(title=f"refusal rate, {regime}/{variant}/{defense}, seeds {study['seeds']}: mean [95% CI]")
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


def variants_table(study: dict[str, Any], defense: str = "none", regime: str = "full") -> Table:
    """Harmful refusal per condition, one column per training variant; then the worst benign
    refusal and what each variant changed inside the model (MIR term at ReGap's layer, the
    image/caption cosine at the last layer)."""
    results = study["results"][regime]
    variants = list(results)
    table = Table(title=f"harmful refusal by training variant ({regime}/{defense}), seeds {study['seeds']}")
    table.add_column("condition", no_wrap=True)
    for variant in variants:
        table.add_column(variant, no_wrap=True)
    for condition in study["conditions"]:
        cells = [
            _compact(results[v].get(defense, {}).get(condition, {}).get("harmful_refusal")) for v in variants
        ]
        table.add_row(condition, *cells)

    def worst_benign(variant: str) -> str:
        means = [e.get("benign_refusal", {}).get("mean") for e in results[variant].get(defense, {}).values()]
        known = [m for m in means if m is not None]
        return f"{max(known):.2f}" if known else "-"

    table.add_row("worst benign", *[worst_benign(v) for v in variants])
    gap = study.get("gap", {})
    if gap:
        layer = next(iter(gap.values()))["layer"]
        table.add_row(f"MIR term L{layer}", *[_compact(gap.get(v, {}).get("mir_layer")) for v in variants])
        table.add_row(
            "img/caption cos",
            *[
                _compact((gap.get(v, {}).get("semantic_shift", {}).get("matched") or [None])[-1])
                for v in variants
            ],
        )
    return table


def premises_table(study: dict[str, Any]) -> Table:
    """The organism's premises (docs/organism.md), met or not, per regime; then the worst
    over-refusal of every defense."""
    table = Table(title="premises of the organism (plain, no defense)")
    for column in ("regime", "premise", "value", "met"):
        table.add_column(column, no_wrap=column != "value")
    for regime, checks in study.get("premises", {}).items():
        for name, check in checks.items():
            value = check["value"]
            if isinstance(value, dict):
                text = ", ".join(
                    f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items()
                )
            else:
                text = "-" if value is None else f"{value:.2f}"
            met = {True: "yes", False: "NO", None: "not measured"}[check["met"]]
            table.add_row(regime, name, text, met)
    for regime, by_variant in study.get("worst_over_refusal", {}).items():
        for variant, by_defense in by_variant.items():
            for defense, worst in by_defense.items():
                table.add_row(
                    regime,
                    f"worst over-refusal {variant}/{defense}",
                    f"{_compact(worst)} ({worst.get('condition')})",
                    "-",
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
    read_steps: int = typer.Option(
        0,
        min=0,
        help="Opt-in stage-1 reading phase (docs/organism.md, rule 3, rung f): extra LLM steps "
        "copying written pictures into replies. 0 = organism v2.",
    ),
    projector_steps: int | None = typer.Option(
        None, min=1, help="Stage-2 projector steps (default: the config's, 150)."
    ),
    projector_lr: float | None = typer.Option(
        None, min=0.0, help="Stage-2 projector learning rate (default: the config's, 2e-3)."
    ),
) -> None:
    """Train the organism for SEED and write an HF checkpoint that load_vlm loads."""
    from dataclasses import replace

    from safegap.organism.build import build_organism, default_cache_dir
    from safegap.organism.config import OrganismConfig

    with user_errors():
        if scale <= 0:
            raise ValueError(f"--scale must be positive, got {scale}")
        set_threads(threads)
        base = OrganismConfig()
        base = replace(
            base,
            text=replace(base.text, read_steps=read_steps),
            projector=replace(
                base.projector,
                steps=projector_steps or base.projector.steps,
                lr=base.projector.lr if projector_lr is None else projector_lr,
            ),
        )
        config = base.scaled(scale) if scale != 1.0 else base
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
    regime: str = typer.Option(
        "projector,full",
        help="Comma list: full (stages 0-3) and/or projector (stages 0-2, the LLM never tuned with images).",
    ),
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
    from safegap.organism.regimes import parse_regimes
    from safegap.organism.study import (
        ORGANISM_DEFENSES,
        VARIANTS,
        StudyOptions,
        parse_names,
        parse_seeds,
        run_study,
    )

    with user_errors():
        check_run_options(n_prompts, scale)
        set_threads(threads)
        options = StudyOptions(
            seeds=parse_seeds(seeds),
            regimes=parse_regimes(regime),
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
    for r in options.regimes:
        for v in options.variants:
            for d in options.defenses:
                console.print(results_table(result, v, d, r))
    console.print(premises_table(result))
    console.print(f"wrote {out / 'study.json'} and {out / 'study.md'}")


def diagnostics_table(result: dict[str, Any], stage: str = "after_stage2") -> Table:
    """MIR per gap condition, image minus filler, and the safety band of one stage (seed means)."""
    agg = result["aggregate"][stage]
    table = Table(title=f"organism diagnostics, {stage}, seeds {result['seeds']}: mean [95% t-interval]")
    for column in ("condition", "MIR", "MIR - text filler", "seeds > filler"):
        table.add_column(column, no_wrap=True)
    for condition, entry in agg["gap"].items():
        diff = agg["mir_minus_filler"].get(condition)
        table.add_row(
            condition,
            _compact(entry["mir"]),
            _compact(diff) if diff else "-",
            f"{diff['seeds_positive']}/{diff['n']}" if diff else "-",
        )
    bands = ", ".join("none" if b is None else f"{b[0]}-{b[-1]}" for b in agg["safety_band"]["per_seed"])
    table.caption = f"safety band (logit lens, harmful text) per seed: {bands}"
    return table


def diagnose(
    out: Path = typer.Option(..., "--out", help="Output directory (diagnose.json, diagnose.md, figures)."),
    seeds: str = typer.Option("0,1,2,3,4", help="Comma list or range, e.g. 0,1,2 or 0-4."),
    stages: str = typer.Option(
        "after_stage1,after_stage2,final",
        help="Comma list of checkpoints: after_stage1, after_stage2, final.",
    ),
    n_prompts: int = typer.Option(64, help="Held-out harmful and benign requests each."),
    layer_skip: bool = typer.Option(True, help="Also skip each layer in turn and re-read the refusal."),
    cache_dir: Path | None = typer.Option(
        None, help="Where the organisms are cached (default ~/.cache/safegap/organism)."
    ),
    no_build: bool = typer.Option(
        False, "--no-build", help="Fail on a missing organism instead of building it."
    ),
    scale: float = typer.Option(1.0, help="Organisms of this step scale (as built with --scale)."),
    threads: int | None = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
) -> None:
    """Modality gap (image vs same-length text filler) and safety band of the organism, per seed and
    stage, with seed-level intervals (missing organisms are built as `organism study` builds them)."""
    from safegap.organism.build import default_cache_dir
    from safegap.organism.config import OrganismConfig
    from safegap.organism.diagnostics import DiagnoseOptions, diagnose_organisms
    from safegap.organism.study import parse_seeds

    with user_errors():
        check_run_options(n_prompts, scale)
        set_threads(threads)
        options = DiagnoseOptions(
            seeds=parse_seeds(seeds),
            stages=[s.strip() for s in stages.split(",") if s.strip()],
            n_prompts=n_prompts,
            layer_skip=layer_skip,
            config=OrganismConfig().scaled(scale) if scale != 1.0 else OrganismConfig(),
            cache_dir=cache_dir or default_cache_dir(),
            build_missing=not no_build,
        )
        with progress_bar("organism diagnostics") as update:
            result = diagnose_organisms(options, out, update)
    for stage in result["stages"]:
        console.print(diagnostics_table(result, stage))
    console.print(f"wrote {out / 'diagnose.json'} and {out / 'diagnose.md'}")


def register(app: typer.Typer) -> None:
    organism_app.command("build")(build)
    organism_app.command("study")(study)
    organism_app.command("diagnose")(diagnose)
    __import__("safegap.cli.organism_sweep", fromlist=["register"]).register(organism_app)
    app.add_typer(organism_app, name="organism")
