"""``safegap demo``: the toolkit end to end on the self-trained organism.

The demo is a list of steps (:data:`DEMO_STEPS`); each takes the shared :class:`DemoContext` and
writes its files under ``--out``. Later work appends steps (gap metrics, CMRM, ReGap, ...).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from safegap.cli.common import console, user_errors
from safegap.cli.organism import check_run_options, premises_table, progress_bar, results_table, set_threads


@dataclass
class DemoContext:
    out: Path
    seed: int = 0
    cache_dir: Path | None = None
    n_prompts: int = 64
    #: Multiplies every training stage's step count (1.0 = the real organism).
    scale: float = 1.0
    #: What steps leave for later steps (e.g. "organism_path", "study").
    state: dict[str, Any] = field(default_factory=dict)

    def organism_path(self, step: str) -> Path:
        """The organism the degradation step built (or, when ``step`` runs alone, the cached one)."""
        if self.state.get("organism_path"):
            return Path(self.state["organism_path"])
        from safegap.organism.config import OrganismConfig
        from safegap.organism.study import organism_dir

        config = OrganismConfig() if self.scale == 1.0 else OrganismConfig().scaled(self.scale)
        path = organism_dir(self.cache_dir, self.out / "degradation", "plain", self.seed, config)
        if not (path / "config.json").is_file():
            raise ValueError(
                f"no organism at {path}: run the demo's degradation step first (--steps degradation,{step})"
            )
        return path


@dataclass(frozen=True)
class DemoStep:
    name: str
    title: str
    run: Callable[[DemoContext], None]


def step_degradation(ctx: DemoContext) -> None:
    """Build (or reuse) the seed's organism and measure refusal with and without images."""
    from safegap.organism.config import OrganismConfig
    from safegap.organism.study import StudyOptions, organism_dir, run_study

    config = OrganismConfig() if ctx.scale == 1.0 else OrganismConfig().scaled(ctx.scale)
    options = StudyOptions(
        seeds=[ctx.seed], n_prompts=ctx.n_prompts, cache_dir=ctx.cache_dir, n_real=30, config=config
    )
    with progress_bar("organism") as update:
        study = run_study(options, ctx.out / "degradation", update)
    ctx.state["organism_path"] = str(
        organism_dir(ctx.cache_dir, ctx.out / "degradation", "plain", ctx.seed, options.config)
    )
    ctx.state["study"] = study
    for regime in options.regimes:
        console.print(results_table(study, regime=regime))
        diff = study["differences"][regime]["plain"]["none"].get("text_minus_benign_image")
        if diff:
            console.print(
                f"{regime} regime: harmful refusal, text minus benign image: {diff['mean']:.2f} "
                f"[{diff['ci'][0]:.2f}, {diff['ci'][1]:.2f}]"
            )
    console.print(premises_table(study))


def step_gap(ctx: DemoContext) -> None:
    """MIR of image tokens vs the same-length text filler and the safety band, on the organism
    after stage 2 (``safegap.cli.demo_gap``)."""
    from safegap.cli.demo_gap import run_gap_step

    run_gap_step(ctx)


def step_cmrm(ctx: DemoContext) -> None:
    """Calibrate CMRM on the organism's calibration split, evaluate it before and after
    (``safegap eval``), and write the HTML report (``safegap.cli.demo_cmrm``)."""
    from safegap.cli.demo_cmrm import run_cmrm_report

    run_cmrm_report(ctx)


def step_frontier(ctx: DemoContext) -> None:
    """The safety-utility frontier of none, cmrm (alpha grid), cmrm_sample and the two peer
    defenses on the organism (``safegap frontier``; ``safegap.cli.demo_frontier``)."""
    from safegap.cli.demo_frontier import run_frontier_step

    run_frontier_step(ctx)


def step_train(ctx: DemoContext) -> None:
    """Train a ReGap and a TGA organism for the seed and show them beside the plain one."""
    from safegap.cli.organism import variants_table
    from safegap.organism.config import OrganismConfig
    from safegap.organism.study import StudyOptions, run_study

    config = OrganismConfig() if ctx.scale == 1.0 else OrganismConfig().scaled(ctx.scale)
    options = StudyOptions(
        seeds=[ctx.seed],
        variants=["plain", "regap", "tga"],
        n_prompts=ctx.n_prompts,
        cache_dir=ctx.cache_dir,
        n_real=0,
        stage_snapshots=False,
        config=config,
    )
    with progress_bar("training variants") as update:
        study = run_study(options, ctx.out / "train", update)
    for regime in options.regimes:
        console.print(variants_table(study, regime=regime))


#: Steps that run only when asked for (``--train``, or by name in ``--steps``).
OPTIONAL_STEPS: list[DemoStep] = [
    DemoStep("train", "ReGap and TGA organisms beside the plain one", step_train),
]

#: The demo's steps, in order. Append to extend the demo.
DEMO_STEPS: list[DemoStep] = [
    DemoStep("degradation", "safety degradation of the model organism", step_degradation),
    DemoStep("gap", "modality gap and safety band after stage 2", step_gap),
    DemoStep("cmrm", "the organism before and after CMRM: evaluation and report", step_cmrm),
    DemoStep("frontier", "the safety-utility frontier of every defense", step_frontier),
]


def demo(
    out: Path = typer.Option(Path("out/demo"), "--out", help="Output directory."),
    seed: int = typer.Option(0, help="Organism seed."),
    cache_dir: Path | None = typer.Option(None, help="Organism cache (default ~/.cache/safegap/organism)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Rebuild the organism."),
    steps: str | None = typer.Option(None, help="Comma list of steps to run (default: all)."),
    threads: int | None = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
    scale: float = typer.Option(1.0, help="Multiply the organism's training steps (quick smoke runs)."),
    n_prompts: int = typer.Option(64, help="Held-out prompts per set and condition."),
    train: bool = typer.Option(
        False, "--train", help="Also train a ReGap and a TGA organism and show the three side by side."
    ),
) -> None:
    """Run the demo: build the organism, show how images break its refusals, and what helps."""
    from safegap.organism.build import default_cache_dir

    with user_errors():
        set_threads(threads)
        known = {s.name: s for s in [*DEMO_STEPS, *OPTIONAL_STEPS]}
        chosen = [s.strip() for s in steps.split(",")] if steps else [s.name for s in DEMO_STEPS]
        if train and "train" not in chosen:
            chosen.append("train")
        for name in chosen:
            if name not in known:
                raise ValueError(f"unknown demo step {name!r}; known: {', '.join(known)}")
        check_run_options(n_prompts, scale)
        out.mkdir(parents=True, exist_ok=True)
        ctx = DemoContext(
            out=out,
            seed=seed,
            cache_dir=None if no_cache else (cache_dir or default_cache_dir()),
            n_prompts=n_prompts,
            scale=scale,
        )
        for k, name in enumerate(chosen, 1):
            step = known[name]
            console.rule(f"[{k}/{len(chosen)}] {step.title}")
            step.run(ctx)
        summary = {
            "steps": chosen,
            "seed": seed,
            "organism_path": ctx.state.get("organism_path"),
            "cmrm_report": ctx.state.get("cmrm_report"),
            "frontier": ctx.state.get("frontier"),
        }
        (out / "demo.json").write_text(json.dumps(summary, indent=1))
    console.print(f"demo results in {out}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
