"""``safegap frontier``: every defense at every strength on a safety and a utility benchmark, in one
evaluation run, drawn as the safety-utility frontier (:mod:`safegap.eval.frontier`)."""

from __future__ import annotations

from typing import cast

import typer

from safegap.cli.common import Interrupted, console, fail, user_errors
from safegap.eval.run_guard import RunFailed
from safegap.selection import MAX_CAPABILITY_LOSS, MAX_OVER_REFUSAL_RISE


def frontier_command(
    model: str = typer.Option(..., "--model", help="Checkpoint directory or hub id of the VLM."),
    safety: list[str] = typer.Option(..., "--safety", help="Safety benchmark(s) (y: harmful refusal)."),
    utility: list[str] = typer.Option(
        [], "--utility", help="Utility benchmark(s) (x: their capability metric, else over-refusal)."
    ),
    defense: list[str] = typer.Option(
        ...,
        "--defense",
        help="Defense spec(s): cmrm:PATH,cmrm_sample,vlm_guard:SRC,refusal_direction:SRC,ecso...",
    ),
    out: str = typer.Option(
        ..., "--out", help="Folder for frontier.json, frontier.png and the run (OUT/run)."
    ),
    alpha_grid: str = typer.Option(
        "0.25,0.5,1,2",
        "--alpha-grid",
        help="Strengths for defenses that have one and do not set it (alpha=, refusal_direction's strength=).",
    ),
    condition: list[str] = typer.Option(
        [], "--condition", help="Condition(s) for every benchmark (default: each benchmark's own)."
    ),
    judge: str = typer.Option("refusal", "--judge", help="The judge spec the axes are read from."),
    x_axis: str = typer.Option(
        "auto", "--x", help="capability, over_refusal or auto (capability when every point reports it)."
    ),
    capability_metric: str | None = typer.Option(
        None, "--capability-metric", help="Capability metric to read (default: the one the summary names)."
    ),
    max_capability_loss: float = typer.Option(
        MAX_CAPABILITY_LOSS,
        "--max-capability-loss",
        help="Selection bound: capability loss against none (metric units).",
    ),
    max_over_refusal_rise: float = typer.Option(
        MAX_OVER_REFUSAL_RISE,
        "--max-over-refusal-rise",
        help="Selection bound: worst-condition over-refusal rise against none.",
    ),
    limit: int | None = typer.Option(None, "--limit", help="At most N samples per benchmark."),
    batch_size: int = typer.Option(16, "--batch-size"),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens"),
    data_dir: str | None = typer.Option(
        None, "--data-dir", help="Benchmark data root (default: $SAFEGAP_DATA)."
    ),
    dtype: str | None = typer.Option(None, "--dtype"),
    device: str | None = typer.Option(None, "--device"),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted grid run in OUT/run."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Run the grid of defenses x strengths; write OUT/frontier.json and OUT/frontier.png."""
    from pathlib import Path

    from safegap.data.benchmarks import BENCHMARKS
    from safegap.eval.defenses import DEFENSES
    from safegap.eval.frontier import (
        XAxis,
        default_axis,
        expand_grid,
        frontier_json,
        frontier_points,
        pareto_front,
        parse_alphas,
        plot_frontier,
        select,
        write_frontier,
    )
    from safegap.eval.runner import EvalConfig, run_eval
    from safegap.specs import parse_spec, split_specs

    with user_errors():
        if x_axis not in ("auto", "capability", "over_refusal"):
            raise ValueError(f"--x {x_axis!r}: use capability, over_refusal or auto")
        safety_ids = [str(parse_spec(s, kind="benchmark")) for s in split_specs(safety, BENCHMARKS)]
        utility_ids = [str(parse_spec(s, kind="benchmark")) for s in split_specs(utility, BENCHMARKS)]
        grid = expand_grid(split_specs(defense, DEFENSES), parse_alphas(alpha_grid), known=DEFENSES)
        conditions = [c.strip() for value in condition for c in value.split(",") if c.strip()] or None
        # a utility benchmark's capability is read at its own default conditions (``image``),
        # which --condition (given for the safety benchmarks) may not name
        own = {
            b: list(BENCHMARKS[parse_spec(b).name].defaults)
            for b in utility_ids
            if parse_spec(b).name in BENCHMARKS
        }
        if conditions is not None:
            conditions += [c for cs in own.values() for c in cs if c not in conditions]
        root = Path(out)
        config = EvalConfig(
            model=model,
            benchmarks=list(dict.fromkeys([*safety_ids, *utility_ids])),
            out=root / "run",
            conditions=conditions,
            defenses=[e.spec for e in grid],
            judges=[judge],
            data_dir=data_dir,
            limit=limit,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            resume=resume,
            dtype=dtype,
            device=device,
            progress=not quiet,
        )
        try:
            result = run_eval(config, console=console)
        except Interrupted as exc:
            raise fail(
                f"interrupted by {exc}; run the same command with --resume to continue", exc.exit_code
            ) from None
        except RunFailed as exc:
            raise fail(str(exc), 1) from None
        if result.summary is None:
            return
        if result.no_op:
            console.print(
                f"{root / 'run'}: grid already evaluated; frontier redrawn from its summary", highlight=False
            )
        points = frontier_points(
            result.summary,
            grid,
            safety_ids,
            utility_ids,
            capability_metric=capability_metric,
            capability_conditions=own,
        )
        if x_axis == "capability" and any(p.capability is None for p in points):
            missing = next(p.defense for p in points if p.capability is None)
            raise ValueError(
                f"--x capability: defense {missing!r} has no capability metric on {utility_ids or 'no utility benchmark'}"
            )
        axis: XAxis = default_axis(points) if x_axis == "auto" else cast(XAxis, x_axis)
        points = pareto_front(points, axis)
        families = [f for f in dict.fromkeys(e.family for e in grid) if f != "none"]
        selections = {
            f: select(points, max_capability_loss, max_over_refusal_rise, family=f)
            for f in families
            if sum(e.family == f for e in grid) > 1
        }
        selections["all"] = select(points, max_capability_loss, max_over_refusal_rise)
        meta = {
            "model": model,
            "safety": safety_ids,
            "utility": utility_ids,
            "judge": judge,
            "alpha_grid": parse_alphas(alpha_grid),
            "run": str(root / "run"),
        }
        data = frontier_json(points, axis, selections, meta)
        write_frontier(root / "frontier.json", data)
        plot_frontier(
            points, axis, root / "frontier.png", title=f"{Path(model).name}: {', '.join(safety_ids)}"
        )
    console.print(
        f"frontier: {len(points)} points, {len(data['pareto'])} on the Pareto front", highlight=False
    )
    for p in points:
        x = p.x(axis)
        shown = "n/a" if x is None else f"{x.mean:.3f}"
        mark = " *" if p.pareto else ""
        console.print(
            f"  {p.defense}: x={shown} y={p.harmful_refusal.mean:.3f}{mark}", highlight=False, soft_wrap=True
        )
    chosen = selections["all"].chosen
    console.print(f"selected (rule in frontier.json): {chosen.defense}", highlight=False)
    from safegap.report import write_report

    report = write_report(root / "run", root / "report.html")
    console.print(f"wrote {root / 'frontier.json'}, {root / 'frontier.png'} and {report}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("frontier")(frontier_command)
