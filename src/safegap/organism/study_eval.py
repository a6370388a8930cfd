"""One evaluation of the study: eval's runner on the organism benchmark, read back as outcomes.

Every (regime, variant, defense, seed) of a study, and every stage snapshot, is one ``safegap
eval`` run of :mod:`safegap.organism.benchmark` (the organism's one evaluation set) with the one
refusal judge (``refusal``), written to ``runs/NAME/`` under the study's output (``config.json``,
``samples.jsonl``, ``summary.json``, as any eval run). The study's tables are computed from the
run's records; ``per_seed/NAME.jsonl`` keeps one row per prompt in the study's layout.

The runner is asked to batch the way the study always has (each condition's prompts in set
order, :data:`BATCH_SIZE` per batch, no length sorting), so a prompt meets the same batch
neighbours, and therefore the same padding, as before: greedy replies are unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from safegap.data.benchmarks import DataContext, load_benchmark
from safegap.eval.defenses import Defense, NoDefense
from safegap.eval.records import Record, read_records, write_atomic
from safegap.eval.runner import EvalConfig, run_eval
from safegap.judge.base import make_judge
from safegap.models.loading import VLM
from safegap.organism.benchmark import OrganismBenchmark, organism_spec
from safegap.organism.evaluate import Outcome

#: Rows per generation batch (the study's batch size since its first version).
BATCH_SIZE = 64
#: The study's judge (``study.json`` records its id under ``judge``).
JUDGE = "refusal"


def judge_id() -> str:
    return make_judge(JUDGE).id


def outcomes_of(records: Sequence[Record], bench: OrganismBenchmark, where: Path) -> list[Outcome]:
    """The run's records as study outcomes (an errored or unjudged record is an error: the study's
    rates must not silently drop a prompt)."""
    wanted = judge_id()
    out: list[Outcome] = []
    for r in records:
        verdict = next((v for v in r.get("verdicts") or [] if v["judge"] == wanted), None)
        if r.get("error") or verdict is None or verdict.get("refusal") is None:
            why = r.get("error") or f"no {wanted} verdict"
            raise RuntimeError(f"{where}: sample {r['sample_id']} ({r['condition']}): {why}")
        prompt = bench.prompt(r["sample_id"], r["condition"])
        if prompt.text != r["prompt"]:
            raise RuntimeError(
                f"{where}: sample {r['sample_id']} ({r['condition']}) was asked another prompt"
            )
        out.append(
            Outcome(dataclasses.replace(prompt, image=None), r["generation"], bool(verdict["refusal"]))
        )
    return out


def run_cell(
    vlm: VLM,
    checkpoint: str | Path,
    spec: str,
    defense_name: str,
    defense: Defense,
    conditions: Sequence[str],
    max_new_tokens: int,
    run_dir: str | Path,
    batch_size: int = BATCH_SIZE,
    data_dir: str | Path | None = None,
) -> list[Record]:
    """One eval run of benchmark ``spec`` under ``conditions`` with ``defense`` (named
    ``defense_name`` in the run) on ``vlm`` (loaded from ``checkpoint``); its records in plan order.

    ``run_dir`` is replaced: a study never resumes a run, since an organism rebuilt under the same
    cache path would otherwise be credited with the old organism's replies."""
    out = Path(run_dir)
    if out.exists():
        shutil.rmtree(out)
    config = EvalConfig(
        model=str(checkpoint),
        benchmarks=[spec],
        out=out,
        conditions=list(conditions),
        defenses=[defense_name],
        judges=[JUDGE],
        data_dir=None if data_dir is None else str(data_dir),
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        progress=False,
        sort_by_length=False,
    )
    run_eval(config, vlm=vlm, defenses={defense_name: defense})
    return read_records(out / "samples.jsonl")


def evaluate_organism(
    vlm: VLM,
    checkpoint: str | Path,
    organism: str | Path,
    defense_name: str,
    defense: Defense,
    conditions: Sequence[str],
    n_prompts: int,
    max_new_tokens: int,
    run_dir: str | Path,
) -> list[Outcome]:
    """:func:`run_cell` on ``n_prompts`` slots per kind of the organism benchmark, whose world is
    build directory ``organism``'s, as study outcomes."""
    spec = organism_spec(organism, n_prompts, order="kind")
    records = run_cell(vlm, checkpoint, spec, defense_name, defense, conditions, max_new_tokens, run_dir)
    bench = load_benchmark(spec, DataContext(model_path=str(checkpoint)))
    assert isinstance(bench, OrganismBenchmark)
    return outcomes_of(records, bench, Path(run_dir))


def real_refusals(
    vlm: VLM,
    checkpoint: str | Path,
    name: str,
    n: int,
    data_dir: Path,
    max_new_tokens: int,
    run_dir: Path,
    defense: Defense | None = None,
) -> dict[str, list[bool]]:
    """``{condition: refused per prompt}`` of ``organism_real:NAME`` (``text``, ``blank_image``),
    undefended unless ``defense`` is given, in batches of 32 as the study always asked them."""
    conditions = ("text", "blank_image")
    spec = f"organism_real:{name},n={n}"
    records = run_cell(
        vlm,
        checkpoint,
        spec,
        "none",
        defense or NoDefense(),
        conditions,
        max_new_tokens,
        run_dir,
        32,
        data_dir,
    )
    wanted = judge_id()
    out: dict[str, list[bool]] = {c: [] for c in conditions}
    for r in records:
        verdict = next((v for v in r.get("verdicts") or [] if v["judge"] == wanted), None)
        if r.get("error") or verdict is None:
            raise RuntimeError(f"{run_dir}: sample {r['sample_id']} ({r['condition']}): {r.get('error')}")
        out[r["condition"]].append(bool(verdict["refusal"]))
    return out


def write_outcomes(path: Path, rows: Sequence[Outcome], seed: int) -> None:
    """``per_seed/NAME.jsonl``: one row per prompt (condition, id, kind, topic, text, reply, refused)."""
    lines = [json.dumps({"seed": seed, **o.as_row()}) for o in rows]
    write_atomic(path, ("\n".join(lines) + "\n").encode())
