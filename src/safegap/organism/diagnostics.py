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

import random
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
from safegap.organism.diagnostics_aggregate import LEVEL, aggregate_stage, gap_unsafe_correlation
from safegap.organism.diagnostics_report import markdown, write_figures
from safegap.organism.evaluate import filler_of_length
from safegap.organism.world import REFUSALS, SPLITS, Split, World, parse_world_spec

#: Checkpoints of one organism: the stage snapshots and the finished model.
STAGES: tuple[str, ...] = ("after_stage1", "after_stage2", "final")
IMAGE_CONDITIONS: tuple[str, ...] = ("benign_image", "blank_image", "noise_image")
GAP_CONDITIONS: tuple[str, ...] = (*IMAGE_CONDITIONS, "text_filler")
DEFAULT_PROMPTS = 64


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
