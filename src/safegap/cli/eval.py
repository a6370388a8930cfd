"""``safegap eval``: run benchmarks x conditions x defenses x judges on a model (resumable)."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from safegap.cli.common import Interrupted, console, fail, user_errors
from safegap.eval.run_guard import RunFailed


def saved_records(out: str) -> int:
    """Complete records on disk in run directory ``out`` (after an interruption)."""
    from pathlib import Path

    from safegap.eval.records import read_records

    root = Path(out)
    paths = [root / "samples.jsonl", *sorted((root / "shards").glob("rank-*.jsonl"))]
    try:
        return sum(len(read_records(p)) for p in paths)
    except ValueError:
        return 0


def _fmt(estimate: dict[str, Any] | None) -> str:
    if not estimate:
        return "-"
    lo, hi = estimate["ci"]
    return f"{estimate['mean']:.2f} [{lo:.2f},{hi:.2f}]"


def results_table(summary: dict[str, Any], out: str) -> Table:
    """The overall rows of ``summary``. A benchmark or judge column is shown only when the run has
    several (else it is in the title); defense specs show file arguments by name when those names
    tell the defenses apart. In a narrow terminal, ids and estimates wrap, never cut to "..."."""
    from safegap.report.plots import display_spec

    rows = [r for r in summary["metrics"] if r["category"] == "all"]
    benches = list(dict.fromkeys(r["benchmark"] for r in rows))
    judges = list(dict.fromkeys(r["judge"] for r in rows))
    specs = list(dict.fromkeys(r["defense"] for r in rows))
    short = {d: display_spec(d) for d in specs}
    if len(set(short.values())) < len(specs):
        short = {d: d for d in specs}
    fixed = [f"benchmark {benches[0]}"] * (len(benches) == 1) + [f"judge {judges[0]}"] * (len(judges) == 1)
    table = Table(title=f"{out}: {', '.join([*fixed, 'category all'])}")
    columns = ["benchmark"] * (len(benches) > 1) + ["condition", "defense"] + ["judge"] * (len(judges) > 1)
    for column in columns:
        table.add_column(column, overflow="fold")
    for column in ("n", "errors"):
        table.add_column(column, no_wrap=True, justify="right")
    for column in ("unsafe rate", "refusal rate", "over-refusal"):
        table.add_column(column, overflow="fold")
    for row in rows:
        ids = {"benchmark": row["benchmark"], "condition": row["condition"], "defense": short[row["defense"]]}
        ids["judge"] = row["judge"]
        table.add_row(
            *(ids[c] for c in columns),
            str(row["n"]),
            str(row["errors"]),
            _fmt(row["unsafe_rate"]),
            _fmt(row["refusal_rate"]),
            _fmt(row["over_refusal"]),
        )
    return table


def eval_command(
    model: str = typer.Option(..., "--model", help="Checkpoint directory or hub id of the VLM."),
    bench: list[str] = typer.Option(..., "--bench", help="Benchmark(s): NAME[,NAME] (repeatable)."),
    out: str = typer.Option(..., "--out", help="Run directory (results, summary, report)."),
    condition: list[str] = typer.Option(
        [],
        "--condition",
        help="Condition(s), e.g. text,benign_image,blank_image,noise_image (default: each "
        "benchmark's own defaults).",
    ),
    defense: list[str] = typer.Option(
        ["none"], "--defense", help="Defense spec(s), e.g. none,cmrm:PATH,alpha=1 or system_prompt+cmrm:PATH."
    ),
    judge: list[str] = typer.Option(
        ["refusal"], "--judge", help="Judge spec(s): refusal, guard:PATH, openai:URL,model=NAME."
    ),
    limit: int | None = typer.Option(
        None, "--limit", help="At most N samples per benchmark (spread over categories)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out."),
    batch_size: int = typer.Option(16, "--batch-size", help="Rows per generation batch."),
    keep_order: bool = typer.Option(
        False,
        "--keep-order",
        help="Batch rows in benchmark order (default: longest prompt first, less padding).",
    ),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first per-sample problem."),
    data_dir: str | None = typer.Option(
        None, "--data-dir", help="Benchmark data root (default: $SAFEGAP_DATA)."
    ),
    benign_images: str | None = typer.Option(
        None,
        "--benign-images",
        help="Folder of harmless images for the benign_image condition (default: synthetic scenes).",
    ),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens"),
    seed: int = typer.Option(0, "--seed", help="Seed for sampling (greedy decoding ignores it)."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy (default)."),
    top_p: float = typer.Option(1.0, "--top-p"),
    dtype: str | None = typer.Option(None, "--dtype", help="e.g. bfloat16 (default: the checkpoint's)."),
    device: str | None = typer.Option(None, "--device", help="e.g. cuda:0 (default: accelerate's or CPU)."),
    layers_path: str | None = typer.Option(
        None, "--layers-path", help="Decoder layers of an unknown family."
    ),
    long_prompts: str = typer.Option(
        "error",
        "--long-prompts",
        help="A prompt longer than the model takes: error (an errored sample) or truncate (cut, recorded).",
    ),
    quiet: bool = typer.Option(
        False, "--quiet", help="No progress bars and no result table (see OUT/summary.json)."
    ),
) -> None:
    """Evaluate MODEL; per-sample results go to OUT/samples.jsonl, metrics to OUT/summary.json."""
    from safegap.data.benchmarks import BENCHMARKS
    from safegap.eval.defenses import DEFENSES
    from safegap.eval.runner import EvalConfig, run_eval
    from safegap.judge.base import JUDGES
    from safegap.specs import split_specs

    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    with user_errors():
        conditions = [c.strip() for value in condition for c in value.split(",") if c.strip()] or None
        config = EvalConfig(
            model=model,
            benchmarks=split_specs(bench, BENCHMARKS),
            out=out,
            conditions=conditions,
            defenses=split_specs(defense, DEFENSES),
            judges=split_specs(judge, JUDGES),
            data_dir=data_dir,
            benign_images=benign_images,
            limit=limit,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            seed=seed,
            temperature=temperature,
            top_p=top_p,
            resume=resume,
            strict=strict,
            dtype=dtype,
            device=device,
            layers_path=layers_path,
            progress=not quiet,
            sort_by_length=not keep_order,
            long_prompts=long_prompts,
        )
        try:
            result = run_eval(config, console=console)
        except Interrupted as exc:
            raise fail(
                f"interrupted by {exc}: {saved_records(out)} result(s) saved in {out}; "
                "run the same command with --resume to continue",
                exc.exit_code,
            ) from None
        except RunFailed as exc:
            raise fail(str(exc), 1) from None
    if result.no_op:
        console.print(
            f"{out}: run already complete ({result.planned} samples); nothing to do", highlight=False
        )
    if result.summary is None or quiet:
        return
    table = results_table(result.summary, out)
    Console(stderr=True).print(table)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
