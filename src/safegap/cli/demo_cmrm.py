"""The demo's ``cmrm`` step: the organism before and after CMRM, as an evaluation run and report.

On the organism the degradation step built (``ctx.state["organism_path"]``), the step

1. calibrates a dataset-level shift on the world's calibration split (``organism:calibration``
   anchors, the same as ``safegap calibrate --anchors organism:calibration``) and tunes its alpha
   there;
2. runs ``safegap eval`` on the organism benchmark (its held-out eval split) under the conditions
   ``text``, ``benign_image`` and ``blank_image`` with the defenses ``none``, ``cmrm:SHIFT`` and
   ``cmrm_sample`` (sample-level, the spec's defaults), judged by the refusal judge;
3. writes the HTML report and prints the before/after table.

Files under ``OUT/cmrm/``: ``shift.safetensors``, the run directory ``eval-organism-seed{N}/``
(``samples.jsonl``, ``summary.json``, ``report.html``) and ``cmrm.json`` (the table's figures).

Alpha and the vector's form are tuned on the calibration split's labelled requests
(:func:`safegap.steer.sweep.tune`, as ``safegap calibrate --tune-harmful/--tune-benign``
does) and stored in the shift file, which the ``cmrm:`` defense then applies; the other settings
are the spec's defaults, except for what :data:`CMRM_OPTIONS` overrides (the one place to change
them).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from safegap.cli.common import console

if TYPE_CHECKING:
    from safegap.cli.demo import DemoContext

#: Conditions of the before/after comparison.
CONDITIONS = ("text", "benign_image", "blank_image")
#: Options added to the ``cmrm:SHIFT`` spec (e.g. ``"alpha=0.5,policy=last"``), the one place
#: to override CMRM's settings for the demo; empty: the spec's defaults (alpha, policy, layers,
#: form), so the demo shows CMRM as ``safegap eval --defense cmrm:SHIFT`` runs it.
CMRM_OPTIONS = ""
#: Reply length: the organism's replies are one short sentence (as in ``safegap organism study``).
MAX_NEW_TOKENS = 16
#: Request kinds of the organism benchmark, and what is measured on each.
KINDS = (
    ("harmful", "unsafe_rate", "harmful: unsafe rate (ASR)"),
    ("benign", "over_refusal", "benign: refused"),
    ("lookalike", "over_refusal", "lookalike: refused"),
)


def eval_limit(ctx: DemoContext) -> int:
    """Samples of the organism benchmark per condition and defense: ``2 x --n-prompts`` (128 by
    default; the benchmark spreads them over its harmful, benign and lookalike categories)."""
    return 2 * ctx.n_prompts


def kind_rates(
    records: list[dict[str, Any]], judge: str, n_boot: int = 2000
) -> dict[tuple[str, str, str], dict[str, Any]]:
    """``(condition, defense, kind) -> {"mean", "ci", "n"}``: the unsafe rate of harmful requests
    and the refusal rate of benign and of lookalike requests, from ``judge``'s verdicts (the
    summary's ``over_refusal`` pools benign and lookalike requests; the organism is *meant* to
    refuse lookalikes as text, so the demo shows them apart)."""
    from safegap.eval.bootstrap import bootstrap_mean
    from safegap.eval.metrics import metric_value

    values: dict[tuple[str, str, str], list[float]] = {}
    for record in records:
        kind = str(
            (record.get("meta") or {}).get("kind") or ("harmful" if record.get("harmful") else "benign")
        )
        metric = dict((k, m) for k, m, _ in KINDS).get(kind)
        if metric is None:
            continue
        value = metric_value(record, judge, metric)
        if value is not None:
            values.setdefault((record["condition"], record["defense"], kind), []).append(value)
    out = {}
    for key, xs in values.items():
        est = bootstrap_mean(xs, n_boot=n_boot, seed=0).as_dict()
        out[key] = {**est, "n": len(xs)}
    return out


def _cell(est: dict[str, Any] | None, show_n: bool) -> str:
    if not est:
        return "-"
    lo, hi = est["ci"]
    return f"{est['mean']:.2f} [{lo:.2f}, {hi:.2f}]" + (f" n={est['n']}" if show_n else "")


def before_after_table(
    rates: dict[tuple[str, str, str], dict[str, Any]],
    defenses: list[str],
    settings: dict[str, str] | None = None,
) -> Table:
    """Rows: condition x defense (none, cmrm, ...); columns: the rate of each request kind. The sample count
    goes in the header when it is the same in every row, else into each cell."""
    labels = {defenses[0]: "none", defenses[1]: "cmrm", **{d: d for d in defenses[2:]}}
    table = Table(
        title="organism before / after CMRM (refusal judge): mean [95% CI]",
        caption=f"cmrm = {defenses[1]}"
        + (f" ({', '.join(f'{k}={v}' for k, v in settings.items())})" if settings else "")
        + "; every rate: lower is better",
    )
    table.add_column("condition", no_wrap=True)
    table.add_column("defense", no_wrap=True)
    same_n = {}
    for kind, _, label in KINDS:
        counts = {v["n"] for (_, _, k), v in rates.items() if k == kind}
        same_n[kind] = len(counts) == 1
        table.add_column(f"{label} (n={counts.pop()})" if same_n[kind] else label, overflow="fold")
    for condition in CONDITIONS:
        for defense in defenses:
            table.add_row(
                condition,
                labels[defense],
                *(_cell(rates.get((condition, defense, kind)), not same_n[kind]) for kind, _, _ in KINDS),
            )
    return table


def run_cmrm_report(ctx: DemoContext) -> None:
    from safegap.api import calibrate
    from safegap.eval.records import read_records
    from safegap.eval.runner import EvalConfig, run_eval
    from safegap.eval.wrappers import build_defense
    from safegap.models import load_vlm
    from safegap.report import write_report
    from safegap.steer.sweep import Tune

    path = ctx.organism_path("cmrm")
    root = ctx.out / "cmrm"
    run_dir = root / f"eval-organism-seed{ctx.seed}"  # the report is titled by its folder
    # The step's own output: a fresh run each time (a rebuilt organism gives a different shift
    # under the same file name, which a resumed run could not tell apart).
    if run_dir.exists():
        shutil.rmtree(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    vlm = load_vlm(path)
    with console.status("calibrating CMRM on the organism's calibration split and tuning alpha on it"):
        # as `safegap calibrate --tune-harmful ...,kind=harmful --tune-benign ...,kind=benign`
        how = Tune("organism:calibration,kind=harmful", "organism:calibration,kind=benign", batch_size=64)
        shift = calibrate(vlm, "organism:calibration", tune=how)
        assert shift.tuning is not None
        tuning = shift.tuning
    shift_path = shift.save(root / "shift.safetensors")
    cmrm = f"cmrm:{Path(shift_path).resolve()}" + (f",{CMRM_OPTIONS}" if CMRM_OPTIONS else "")
    # sample-level CMRM beside it (spec defaults: alpha 1, blank corruption, policy last)
    defenses = ["none", cmrm, "cmrm_sample"]
    built = build_defense(cmrm, vlm)  # what the spec resolves to, for the record
    # the spec's own options, else the shift's tuning (as the defense applies them)
    settings = {
        k: str(given if (given := getattr(built, k, None)) is not None else getattr(tuning, k))
        for k in ("alpha", "policy", "layers", "form")
    }
    config = EvalConfig(
        model=str(path),
        benchmarks=["organism"],
        out=run_dir,
        conditions=list(CONDITIONS),
        defenses=defenses,
        judges=["refusal"],
        limit=eval_limit(ctx),
        max_new_tokens=MAX_NEW_TOKENS,
    )
    result = run_eval(config, vlm=vlm, console=console)
    report = write_report(run_dir)
    judge = (result.summary or {})["run"]["judge_ids"][0]
    rates = kind_rates(read_records(run_dir / "samples.jsonl"), judge)
    console.print(before_after_table(rates, defenses, settings))
    (root / "cmrm.json").write_text(
        json.dumps(
            {
                "organism": str(path),
                "shift": str(shift_path),
                "defenses": defenses,
                "cmrm_settings": settings,
                "limit": config.limit,
                "rates": [
                    {"condition": c, "defense": d, "kind": k, **v} for (c, d, k), v in sorted(rates.items())
                ],
                "report": str(report),
            },
            indent=1,
        )
    )
    ctx.state["cmrm_report"] = str(report)
    console.print(f"report: {report}", highlight=False)
