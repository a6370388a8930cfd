"""``safegap eval``: run benchmarks x conditions x defenses x judges on a model (resumable)."""

from __future__ import annotations

import typer
from rich.console import Console

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
    from safegap.eval.runner.render import results_table

    table = results_table(result.summary, out)
    Console(stderr=True).print(table)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
