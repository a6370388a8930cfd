"""The diagnostics of :mod:`safegap.gap` on the model organism, per seed and training stage.

* **Modality gap.** MIR (and the per-layer Fréchet distance) between the image tokens and the text
  tokens after them, for a benign scene, a blank and a noise image, against the **text-filler
  control**: the image replaced by neutral text of exactly the image span's length
  (:func:`safegap.organism.evaluate.filler_of_length`), measured the same way (the filler's tokens
  vs the text tokens after them, :func:`safegap.gap.collect.substring_text_spans`).
* **Safety band.** The refusal-token logit lens (:func:`safegap.gap.layers.localise_safety_layers`)
  on harmful and benign requests as text and on harmful requests with the scene image, with the
  organism's own refusal phrases; and the layer-skip check (:func:`safegap.gap.layers.layer_skip_refusal`).

The prompts are the eval split's requests (topics and phrasings never trained on), the same for
every seed and stage, so seeds can be compared pairwise. Aggregates over seeds are means with a
seed-level Student-t 95 % interval (one number per seed; the seeds are the replicates).

``gap_records(arg)`` makes ``--data organism[:SPLIT[:N]]`` work for ``safegap gap`` and
``safegap layers`` (:mod:`safegap.gap.data`).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from safegap.gap.collect import measure_gap, substring_text_spans
from safegap.gap.data import GapRecord
from safegap.gap.layers import layer_skip_refusal, localise_safety_layers, refusal_token_ids
from safegap.gap.report import json_safe, run_gap, run_layers, write_json_atomic
from safegap.models.loading import VLM
from safegap.organism import scenes
from safegap.organism.build import default_cache_dir, make_world
from safegap.organism.config import OrganismConfig
from safegap.organism.evaluate import filler_of_length
from safegap.organism.world import REFUSALS, SPLITS, Split, World, parse_world_spec

#: Checkpoints of one organism: the stage snapshots and the finished model.
STAGES: tuple[str, ...] = ("after_stage1", "after_stage2", "final")
IMAGE_CONDITIONS: tuple[str, ...] = ("benign_image", "blank_image", "noise_image")
GAP_CONDITIONS: tuple[str, ...] = (*IMAGE_CONDITIONS, "text_filler")
DEFAULT_PROMPTS = 64
#: Confidence level of the seed-level intervals.
LEVEL = 0.95


# -- records ---------------------------------------------------------------------------------------


def parse_source_arg(arg: str) -> tuple[Split, int, int]:
    """``"eval,world_seed=0,n=64"`` -> ``("eval", 0, 64)``: the split (first part, default eval),
    the world seed (default 0) and the requests per kind (default 64); the same spec style as the
    CMRM anchors (:func:`safegap.organism.world.parse_world_spec`)."""
    split, world_seed, n = parse_world_spec(
        arg, "organism data", "use organism[:SPLIT][,world_seed=S][,n=N]", "eval", DEFAULT_PROMPTS, SPLITS
    )
    return split, world_seed, n  # type: ignore[return-value]


def organism_records(world: World, split: Split = "eval", n: int = DEFAULT_PROMPTS) -> list[GapRecord]:
    """``n`` harmful then ``n`` benign requests of ``split``, each with a benign scene image (seeded,
    the same for every call) and its caption, labelled harmful/benign."""
    rng = random.Random(f"organism-gap-{split}")
    rows = []
    for harmful in (True, False):
        tag = "h" if harmful else "b"
        for k, request in enumerate(world.requests(split, harmful, limit=n, seed=0)):
            shown = scenes.scene(rng)
            rows.append(
                GapRecord(
                    prompt=request.text,
                    image=shown.image,
                    caption=shown.caption,
                    label="harmful" if harmful else "benign",
                    id=f"{tag}{k}",
                )
            )
    return rows


def gap_records(arg: str = "") -> list[GapRecord]:
    """Data source ``organism[:SPLIT][,world_seed=S][,n=N]`` (:mod:`safegap.gap.data`): the
    organism world's requests with benign scene images and captions (:func:`organism_records`)."""
    split, world_seed, n = parse_source_arg(arg)
    config = OrganismConfig()
    config = replace(config, world=replace(config.world, world_seed=world_seed))
    return organism_records(make_world(config), split, n)


def condition_records(records: Sequence[GapRecord], condition: str) -> list[GapRecord]:
    """The records with the image of ``condition``: the scene as is, a blank or a noise image."""
    if condition == "benign_image":
        return list(records)
    if condition == "blank_image":
        return [GapRecord(r.prompt, scenes.blank(), None, r.label, r.id) for r in records]
    if condition == "noise_image":
        return [GapRecord(r.prompt, scenes.noise(seed=k), None, r.label, r.id) for k, r in enumerate(records)]
    raise ValueError(f"unknown image condition {condition!r}; known: {', '.join(IMAGE_CONDITIONS)}")


def filler_records(
    records: Sequence[GapRecord], tokenizer: Any, n_tokens: int, seed: int = 0
) -> tuple[list[GapRecord], list[str]]:
    """The text-filler control: each prompt preceded by neutral words of exactly ``n_tokens``
    tokens and a newline (as the study's ``text_filler`` condition), and the fillers themselves
    (the token set standing in for the image)."""
    rng = random.Random(f"organism-filler-{seed}")
    fillers = [filler_of_length(tokenizer, n_tokens, rng) for _ in records]
    rows = [
        GapRecord(prompt=f"{filler}\n{r.prompt}", label=r.label, id=r.id)
        for filler, r in zip(fillers, records, strict=True)
    ]
    return rows, fillers


def image_token_count(vlm: VLM) -> int:
    """Image tokens per image of a LLaVA-style checkpoint (the filler's length)."""
    count = getattr(vlm.model.config, "image_seq_length", None)
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"{vlm.name_or_path}: config has no image_seq_length; not a LLaVA-style organism")
    return count


# -- one checkpoint ----------------------------------------------------------------------------------


def _compact_gap(report: dict[str, Any]) -> dict[str, Any]:
    layers = report["per_layer"]
    probe = report.get("probe")
    return {
        "mir": report["mir"]["total"],
        "mir_reference_fast": report["mir"]["total_reference_fast"],
        "fd": [row["fd"] for row in layers],
        "centroid_l2": [row["centroid_l2"] for row in layers],
        "probe_balanced_accuracy": None if probe is None else probe["balanced_accuracy"],
        "image_tokens": layers[0]["image_tokens"],
        "text_tokens": layers[0]["text_tokens"],
    }


def _compact_layers(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "layers": body["layers"],
        "refusal_tokens": body["refusal_tokens"],
        "safety_band": body["safety_band"],
        "conditions": {
            name: {
                "prompts": c["prompts"],
                "refusal_prob_mean": c["refusal_prob_mean"],
                "refusal_top1_share": c["refusal_top1_share"],
                "start": {k: c["start"][k] for k in ("median", "found", "of")},
                "end": {k: c["end"][k] for k in ("median", "found", "of")},
            }
            for name, c in body["conditions"].items()
        },
        "layer_skip": body.get("layer_skip"),
    }


def measure_checkpoint(
    vlm: VLM,
    records: Sequence[GapRecord],
    conditions: Sequence[str] = GAP_CONDITIONS,
    phrases: Sequence[str] = REFUSALS,
    layer_skip: bool = True,
    batch_size: int = 32,
    out_dir: str | Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Gap (per condition) and safety band of one organism checkpoint, as a compact dict.

    With ``out_dir``, the full ``gap.json`` of every condition (``gap_{condition}/``, semantic
    shift for the scene images) and ``layers/layers.json`` are written too, with their figures."""
    for condition in conditions:
        if condition not in GAP_CONDITIONS:
            raise ValueError(f"unknown gap condition {condition!r}; known: {', '.join(GAP_CONDITIONS)}")
    harmful = [r for r in records if r.is_harmful]
    benign = [r for r in records if not r.is_harmful]
    if not harmful or not benign:
        raise ValueError("the organism diagnostics need harmful and benign records")
    out = None if out_dir is None else Path(out_dir)
    gap: dict[str, Any] = {}
    for condition in conditions:
        spans = None
        if condition == "text_filler":
            rows, fillers = filler_records(records, vlm.tokenizer, image_token_count(vlm), seed)
            spans = substring_text_spans(fillers)
        else:
            rows = condition_records(records, condition)
        if out is not None:
            report = run_gap(
                vlm,
                rows,
                out / f"gap_{condition}",
                batch_size=batch_size,
                shift=condition == "benign_image",
                conditions=False,
                seed=seed,
                label=condition,
                spans=spans,
                data_spec=f"organism ({condition})",
            )
        else:
            report = json_safe(
                measure_gap(vlm, rows, batch_size=batch_size, spans=spans, seed=seed).as_dict()
            )
        gap[condition] = _compact_gap(report)
    harmful_texts, benign_texts = [r.prompt for r in harmful], [r.prompt for r in benign]
    images = [r.load_image() for r in harmful]
    if out is not None:
        body = run_layers(
            vlm,
            out / "layers",
            harmful_texts,
            benign_texts,
            images,
            phrases=phrases,
            batch_size=batch_size,
            data_spec="organism",
            layer_skip=layer_skip,
        )
    else:
        found = localise_safety_layers(
            vlm, harmful_texts, benign_texts, images, phrases=phrases, batch_size=batch_size
        )
        body = json_safe(found.as_dict())
        if layer_skip:
            ids = list(refusal_token_ids(vlm.tokenizer, phrases))
            body["layer_skip"] = layer_skip_refusal(
                vlm, harmful_texts, benign_texts, ids, batch_size
            ).as_dict()
    filler = gap.get("text_filler")
    return {
        "gap": gap,
        "mir_minus_filler": {
            c: gap[c]["mir"] - filler["mir"] for c in conditions if c != "text_filler" and filler is not None
        },
        "layers": _compact_layers(body),
    }


# -- aggregation over seeds --------------------------------------------------------------------------


def t_quantile(df: int, level: float = LEVEL) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, df))


def seed_interval(
    values: Sequence[float | None], level: float = LEVEL, probability: bool = False
) -> dict[str, Any]:
    """Mean over seeds with a Student-t interval (``None`` values are left out; one value: no
    interval). ``probability``: the interval is clipped to [0, 1]."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return {"mean": None, "ci": [None, None], "n": 0, "values": list(values)}
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return {"mean": mean, "ci": [None, None], "n": 1, "values": list(values)}
    half = t_quantile(len(xs) - 1, level) * statistics.stdev(xs) / math.sqrt(len(xs))
    lo, hi = mean - half, mean + half
    if probability:
        lo, hi = max(lo, 0.0), min(hi, 1.0)
    return {"mean": mean, "ci": [lo, hi], "n": len(xs), "values": list(values)}


def _per_layer(curves: Sequence[Sequence[float]], probability: bool = False) -> dict[str, Any]:
    columns = list(zip(*curves, strict=True))
    ests = [seed_interval(list(c), probability=probability) for c in columns]
    return {"mean": [e["mean"] for e in ests], "ci": [e["ci"] for e in ests]}


def aggregate_stage(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Seed-level means and t-intervals of one stage's :func:`measure_checkpoint` results."""
    conditions = list(runs[0]["gap"])
    gap = {
        c: {
            "mir": seed_interval([r["gap"][c]["mir"] for r in runs]),
            "mir_reference_fast": seed_interval([r["gap"][c]["mir_reference_fast"] for r in runs]),
            "fd": _per_layer([r["gap"][c]["fd"] for r in runs]),
        }
        for c in conditions
    }
    differences = {}
    for c in runs[0]["mir_minus_filler"]:
        values = [r["mir_minus_filler"][c] for r in runs]
        differences[c] = {**seed_interval(values), "seeds_positive": sum(v > 0 for v in values)}
    bands = [r["layers"]["safety_band"] for r in runs]
    lens = {}
    for name in runs[0]["layers"]["conditions"]:
        rows = [r["layers"]["conditions"][name] for r in runs]
        lens[name] = {
            "refusal_prob_mean": _per_layer([row["refusal_prob_mean"] for row in rows], True),
            "refusal_top1_share": _per_layer([row["refusal_top1_share"] for row in rows], True),
            "start_median": seed_interval([row["start"]["median"] for row in rows]),
            "end_median": seed_interval([row["end"]["median"] for row in rows]),
        }
    out: dict[str, Any] = {
        "seeds": len(runs),
        "gap": gap,
        "mir_minus_filler": differences,
        "safety_band": {
            "per_seed": [None if b is None else b["layers"] for b in bands],
            "start": seed_interval([None if b is None else b["start"] for b in bands]),
            "end": seed_interval([None if b is None else b["end"] for b in bands]),
        },
        "lens": lens,
        "layer_skip": None,
    }
    skips = [r["layers"]["layer_skip"] for r in runs if r["layers"]["layer_skip"]]
    if skips:
        keys = ("harmful_refusal_prob", "harmful_refusal_top1", "benign_refusal_prob", "benign_refusal_top1")
        out["layer_skip"] = {
            "baseline": {k: seed_interval([s["baseline"][k] for s in skips], probability=True) for k in keys},
            "skipped": [
                {
                    "layer": row["layer"],
                    **{k: seed_interval([s["skipped"][i][k] for s in skips], probability=True) for k in keys},
                }
                for i, row in enumerate(skips[0]["skipped"])
            ],
            "largest_drop_layer": [s["largest_drop_layer"] for s in skips],
        }
    return out


# -- the per-seed study ------------------------------------------------------------------------------

#: progress(message, done, total)
Progress = Callable[[str, float, int], None]


@dataclass
class DiagnoseOptions:
    seeds: list[int]
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    conditions: list[str] = field(default_factory=lambda: list(GAP_CONDITIONS))
    split: Split = "eval"
    n_prompts: int = DEFAULT_PROMPTS
    layer_skip: bool = True
    batch_size: int = 32
    config: OrganismConfig = field(default_factory=OrganismConfig)
    #: Where the finished organisms are (``plain-seed{N}-{digest}``); None: under the output.
    cache_dir: Path | None = field(default_factory=default_cache_dir)
    #: Build a missing organism (with its stage snapshots) as ``safegap organism study`` does.
    build_missing: bool = True


def stage_checkpoint(organism: Path, stage: str) -> Path:
    """The checkpoint directory of ``stage`` (a snapshot under ``stages/``, or the organism)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
    path = organism if stage == "final" else organism / "stages" / stage
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no checkpoint for stage {stage} (built without snapshots?)")
    return path


def diagnose_organisms(
    options: DiagnoseOptions, out_dir: str | Path, progress: Progress | None = None
) -> dict[str, Any]:
    """Per seed and stage :func:`measure_checkpoint`, then seed aggregates; writes
    ``diagnose.json``, ``diagnose.md`` and per-layer figures to ``out_dir``."""
    from safegap.models.loading import load_vlm
    from safegap.organism.study_plan import VARIANTS, ensure_organism, organism_dir

    if not options.seeds:
        raise ValueError("no seeds given")
    for stage in options.stages:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
    if "text_filler" not in options.conditions:
        raise ValueError("the conditions must include the text_filler control")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = make_world(options.config)
    records = organism_records(world, options.split, options.n_prompts)
    total = len(options.seeds) * len(options.stages)
    per_seed: dict[str, dict[str, Any]] = {}
    organisms: dict[str, str] = {}
    for i, seed in enumerate(options.seeds):
        path = organism_dir(options.cache_dir, out, "plain", seed, options.config)
        if not (path / "organism.json").is_file():
            if not options.build_missing:
                raise FileNotFoundError(f"seed {seed}: no organism at {path} (build it or allow building)")
            if progress is not None:
                progress(f"seed {seed}: building the organism", i * len(options.stages), total)
            path, _ = ensure_organism(
                out, VARIANTS["plain"](options.config, world), seed, options.config, options.cache_dir, True
            )
        organisms[str(seed)] = str(path)
        per_seed[str(seed)] = {}
        for j, stage in enumerate(options.stages):
            if progress is not None:
                progress(f"seed {seed}: {stage}", i * len(options.stages) + j, total)
            vlm = load_vlm(stage_checkpoint(path, stage))
            per_seed[str(seed)][stage] = measure_checkpoint(
                vlm,
                records,
                options.conditions,
                layer_skip=options.layer_skip,
                batch_size=options.batch_size,
            )
    result: dict[str, Any] = {
        "schema": "safegap.organism.diagnose/1",
        "seeds": options.seeds,
        "stages": options.stages,
        "settings": {
            "split": options.split,
            "n_prompts_per_kind": options.n_prompts,
            "records": len(records),
            "conditions": options.conditions,
            "refusal_phrases": list(REFUSALS),
            "layer_skip": options.layer_skip,
            "interval": f"mean over seeds, Student-t {int(LEVEL * 100)} % interval (df = seeds - 1)",
            "config_digest": options.config.digest(),
        },
        "organisms": organisms,
        "per_seed": per_seed,
        "aggregate": {
            stage: aggregate_stage([per_seed[str(s)][stage] for s in options.seeds])
            for stage in options.stages
        },
    }
    result["correlation"] = gap_unsafe_correlation(result)
    result["figures"] = write_figures(result, out)
    write_json_atomic(out / "diagnose.json", result)
    (out / "diagnose.md").write_text(markdown(result), encoding="utf-8")
    if progress is not None:
        progress("done", total, total)
    return json_safe(result)  # type: ignore[no-any-return]


#: What the correlation compares: the scene image's MIR and a first-token unsafe proxy.
CORRELATION_METRIC = "gap.benign_image.mir"
CORRELATION_UNSAFE = (
    "1 - share of harmful requests with the scene image whose greedy first token is a refusal token"
)


def unsafe_proxy(run: dict[str, Any]) -> float | None:
    """The first-token unsafe rate of harmful requests with the scene image (see CORRELATION_UNSAFE)."""
    lens = run["layers"]["conditions"].get("harmful_text_image")
    return None if lens is None else 1.0 - float(lens["refusal_top1_share"][-1])


def gap_unsafe_correlation(result: dict[str, Any]) -> dict[str, Any]:
    """Pearson and Spearman (bootstrap intervals, :func:`safegap.gap.correlate.correlate`) between
    the scene image's MIR and :func:`unsafe_proxy`: across seeds per stage, and across every
    (seed, stage) checkpoint; ``None`` with fewer than 3 points."""
    from safegap.gap.correlate import CorrelationPoint, correlate

    def points(stages: Sequence[str]) -> list[CorrelationPoint]:
        rows = []
        for seed in result["seeds"]:
            for stage in stages:
                run = result["per_seed"][str(seed)][stage]
                unsafe = unsafe_proxy(run)
                if "benign_image" in run["gap"] and unsafe is not None:
                    mir = run["gap"]["benign_image"]["mir"]
                    rows.append(CorrelationPoint(f"seed{seed} {stage}", mir, unsafe, stage))
        return rows

    def summary(rows: list[CorrelationPoint]) -> dict[str, Any] | None:
        if len(rows) < 3:
            return None
        found = correlate(rows, metric_key=CORRELATION_METRIC, unsafe_key="unsafe_proxy")
        return json_safe(found.as_dict())  # type: ignore[no-any-return]

    return {
        "metric": CORRELATION_METRIC,
        "unsafe": CORRELATION_UNSAFE,
        "per_stage": {stage: summary(points([stage])) for stage in result["stages"]},
        "all_checkpoints": summary(points(result["stages"])),
    }


def write_figures(result: dict[str, Any], out: Path) -> list[str]:
    """Per stage: per-layer FD of each gap condition and the lens's refusal probability per
    condition, mean over seeds with the min-max band."""
    from safegap.gap.plots import plot_correlation, plot_layer_curves

    names = []
    for stage in result["stages"]:
        runs = [result["per_seed"][str(s)][stage] for s in result["seeds"]]
        layers = runs[0]["layers"]["layers"]
        fd = {c: [r["gap"][c]["fd"] for r in runs] for c in runs[0]["gap"]}
        names.append(
            plot_layer_curves(
                layers,
                fd,
                out / f"fd_{stage}.png",
                "Fréchet distance (MIR layer term)",
                f"{stage}: modality gap",
                log=True,
            ).name
        )
        lens = {
            c: [r["layers"]["conditions"][c]["refusal_prob_mean"] for r in runs]
            for c in runs[0]["layers"]["conditions"]
        }
        names.append(
            plot_layer_curves(
                layers,
                lens,
                out / f"lens_{stage}.png",
                "P(refusal tokens), logit lens",
                f"{stage}: refusal by layer",
                log=True,
            ).name
        )
    pooled = result.get("correlation", {}).get("all_checkpoints")
    if pooled:
        p, r = pooled["pearson"], pooled["spearman"]
        subtitle = f"all checkpoints: Pearson {_fmt(p, 2, 'r')}, Spearman {_fmt(r, 2, 'r')}"
        names.append(
            plot_correlation(pooled["points"], out / "correlate.png", "MIR (scene image)", subtitle).name
        )
    return names


def _fmt(est: dict[str, Any] | None, digits: int = 3, key: str = "mean") -> str:
    if not est or est.get(key) is None:
        return "-"
    lo, hi = est["ci"]
    if lo is None:
        return f"{est[key]:.{digits}f}"
    return f"{est[key]:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def markdown(result: dict[str, Any]) -> str:
    """The tables of ``diagnose.json``: aggregates per stage, then per-seed values."""
    seeds = result["seeds"]
    lines = [
        "# Organism diagnostics: modality gap and safety band",
        "",
        f"Seeds {seeds}; {result['settings']['records']} eval requests (half harmful); "
        f"{result['settings']['interval']}.",
        "",
        "## MIR (image tokens vs text tokens after them; text filler: filler tokens vs text after them)",
        "",
    ]
    conditions = result["settings"]["conditions"]
    lines += [
        "| stage | "
        + " | ".join(conditions)
        + " | "
        + " | ".join(f"{c} - filler" for c in conditions if c != "text_filler")
        + " |"
    ]
    lines += ["|---" * (len(conditions) * 2) + "|"]
    for stage in result["stages"]:
        agg = result["aggregate"][stage]
        cells = [_fmt(agg["gap"][c]["mir"]) for c in conditions]
        cells += [
            f"{_fmt(agg['mir_minus_filler'][c])} ({agg['mir_minus_filler'][c]['seeds_positive']}/{len(seeds)} > 0)"
            for c in conditions
            if c != "text_filler"
        ]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines += ["", "## Safety band (logit lens, harmful text) and refusal at the output", ""]
    lines += [
        "| stage | band per seed | start | end | P(refusal) last layer: harmful text | harmful + scene image | benign text |",
        "|---|---|---|---|---|---|---|",
    ]
    for stage in result["stages"]:
        agg = result["aggregate"][stage]
        lens = agg["lens"]

        def last(name: str, agg_lens: dict[str, Any] = lens) -> str:
            if name not in agg_lens:
                return "-"
            curve = agg_lens[name]["refusal_prob_mean"]
            return _fmt({"mean": curve["mean"][-1], "ci": curve["ci"][-1]})

        per_seed = ", ".join(
            "-".join(map(str, (b[0], b[-1]))) if b else "none" for b in agg["safety_band"]["per_seed"]
        )
        lines.append(
            f"| {stage} | {per_seed} | {_fmt(agg['safety_band']['start'], 2)} | {_fmt(agg['safety_band']['end'], 2)} | "
            f"{last('harmful_text')} | {last('harmful_text_image')} | {last('benign_text')} |"
        )
    n_layers = len(result["per_seed"][str(seeds[0])][result["stages"][0]]["layers"]["layers"])
    lines += ["", "## Logit lens: P(refusal tokens) at the last prompt position, per layer", ""]
    lines += ["| stage | condition | " + " | ".join(f"layer {k}" for k in range(n_layers)) + " |"]
    lines += ["|---" * (n_layers + 2) + "|"]
    for stage in result["stages"]:
        for name, entry in result["aggregate"][stage]["lens"].items():
            curve = entry["refusal_prob_mean"]
            cells = [_fmt({"mean": m, "ci": c}, 2) for m, c in zip(curve["mean"], curve["ci"], strict=True)]
            lines.append(f"| {stage} | {name} | " + " | ".join(cells) + " |")
    skip_stages = [s for s in result["stages"] if result["aggregate"][s]["layer_skip"]]
    if skip_stages:
        lines += ["", "## Layer skip: first-token refusal probability with one layer skipped", ""]
        header = " | ".join(f"skip {k}" for k in range(n_layers))
        lines += [f"| stage | prompts | none | {header} | largest harmful drop (per seed) |"]
        lines += ["|---" * (n_layers + 4) + "|"]
        for stage in skip_stages:
            skip = result["aggregate"][stage]["layer_skip"]
            for kind in ("harmful", "benign"):
                key = f"{kind}_refusal_prob"
                cells = [_fmt(skip["baseline"][key], 2), *(_fmt(row[key], 2) for row in skip["skipped"])]
                tail = str(skip["largest_drop_layer"]) if kind == "harmful" else ""
                lines.append(f"| {stage} | {kind} text | " + " | ".join(cells) + f" | {tail} |")
    corr = result.get("correlation")
    if corr:
        lines += ["", f"## Correlation: {corr['metric']} vs unsafe proxy ({corr['unsafe']})", ""]
        lines += [
            "| points | n | Pearson r [95% bootstrap] | Spearman rho [95% bootstrap] |",
            "|---|---|---|---|",
        ]
        for name, entry in [*corr["per_stage"].items(), ("all checkpoints", corr["all_checkpoints"])]:
            if entry:
                pearson, spearman = _fmt(entry["pearson"], 2, "r"), _fmt(entry["spearman"], 2, "r")
                lines.append(f"| {name} | {entry['n']} | {pearson} | {spearman} |")
    lines += ["", "## Per seed", ""]
    lines += ["| seed | stage | " + " | ".join(f"MIR {c}" for c in conditions) + " | band | unsafe proxy |"]
    lines += ["|---" * (len(conditions) + 4) + "|"]
    for seed in seeds:
        for stage in result["stages"]:
            run = result["per_seed"][str(seed)][stage]
            band = run["layers"]["safety_band"]
            cells = [f"{run['gap'][c]['mir']:.3f}" for c in conditions]
            unsafe = unsafe_proxy(run)
            cells += [str(band["layers"]) if band else "none", "-" if unsafe is None else f"{unsafe:.2f}"]
            lines.append(f"| {seed} | {stage} | " + " | ".join(cells) + " |")
    lines += ["", f"Per-seed numbers: diagnose.json; figures: {', '.join(result.get('figures', []))}.", ""]
    return "\n".join(lines)
