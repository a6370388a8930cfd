"""ReGap's central claim as a dose-response (issue 12): does a smaller image-text gap go with
more refusal next to an image?

``safegap organism sweep --reg regap --lambda 0,0.1,0.3,1,3,10 --seeds 0-4`` builds one
organism per seed and lambda (stage 2 carries ``ReGapLoss(weight=lambda)``; lambda 0 is the
plain organism and shares the study's cache), measures every *point* (regime, lambda, seed) and
correlates each gap measure with harmful refusal across points, as the paper's figure does
across models (``research/regap.md``).

Output contract (``sweep.json``)::

    {"reg": "regap", "lambdas": [...], "seeds": [...], "regimes": [...], "n_prompts": 64,
     "points": [{"regime", "lambda", "seed", "variant", MEASURE: value, ...}, ...],
     "correlations": {REGIME: {MEASURE: {"spearman", "ci", "n", "ci_seed_clustered",
                                         "vs_blank_image": {"spearman", "ci", "n", "ci_seed_clustered"}}}},
     "by_lambda": {REGIME: {LAMBDA: {MEASURE: mean over seeds}}}}

``DIR/points.jsonl`` gets one line per point as it finishes (the resume log).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from safegap.organism.config import OrganismConfig
from safegap.organism.regimes import REGIMES

#: Regularisers the sweep knows.
REGS: tuple[str, ...] = ("regap",)
#: Gap measures correlated with refusal.
GAP_MEASURES: tuple[str, ...] = ("mir", "mir_layer", "centroid_gap", "last_token_shift_norm")
#: Refusal targets: the main one (``correlations[R][M]``) and the second (``vs_blank_image``).
TARGET = "harmful_refusal_benign_image"
SECOND_TARGET = "harmful_refusal_blank_image"
MEASURES: tuple[str, ...] = (
    *GAP_MEASURES,
    TARGET,
    SECOND_TARGET,
    "harmful_refusal_text",
    "benign_refusal_benign_image",
    "image_understanding",
    "caption_loss",
)
SWEEP_CONDITIONS: tuple[str, ...] = ("benign_image", "blank_image", "text")
#: Gap records (eval requests with scenes) per kind, as :mod:`safegap.organism.measures` uses.
GAP_RECORDS = 32


def parse_lambdas(spec: str) -> list[float]:
    """``"0,0.1,1"`` -> [0.0, 0.1, 1.0]; non-numbers, negatives, duplicates are one-line errors."""
    out: list[float] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        try:
            value = float(part)
        except ValueError as exc:
            raise ValueError(f"--lambda: {part!r} is not a number") from exc
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"--lambda: {part!r} must be a finite number >= 0")
        if value in out:
            raise ValueError(f"--lambda: {part!r} is given twice")
        out.append(value)
    if not out:
        raise ValueError("--lambda: no value given")
    return out


def parse_reg(name: str) -> str:
    name = name.strip()
    if name not in REGS:
        raise ValueError(f"unknown --reg {name!r}; only {', '.join(REGS)} is known")
    return name


def point_key(regime: str, lam: float, seed: int) -> tuple[str, str, int]:
    return (regime, f"{float(lam):g}", int(seed))


@dataclass
class SweepOptions:
    lambdas: list[float]
    seeds: list[int]
    regimes: list[str] = field(default_factory=lambda: list(REGIMES))
    reg: str = "regap"
    n_prompts: int = 64
    max_new_tokens: int = 16
    config: OrganismConfig = field(default_factory=OrganismConfig)
    cache_dir: Path | None = None


def sweep_variant(lam: float, config: OrganismConfig) -> Any:
    """The study :class:`Variant` of one lambda (0: ``VARIANTS["plain"]``, the study's cache)."""
    from safegap.organism import study
    from safegap.organism.build import make_world

    if lam == 0:
        return study.VARIANTS["plain"](config, make_world(config))
    return study.regap_variant(config, lam)


# -- resume log ------------------------------------------------------------------------------------


def read_points(path: Path) -> list[dict[str, Any]]:
    """Points of ``points.jsonl`` (a torn last line, from a kill mid-write, is ignored)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def append_point(path: Path, point: dict[str, Any]) -> None:
    """Add one point by rewriting the log atomically (a kill leaves the old or the new file)."""
    from safegap.eval.records import write_atomic

    lines = [json.dumps(p) for p in read_points(path)] + [json.dumps(point)]
    write_atomic(path, ("\n".join(lines) + "\n").encode())


def pending(options: SweepOptions, done: Iterable[dict[str, Any]]) -> list[tuple[float, int, list[str]]]:
    """``(lambda, seed, regimes still to measure)`` per build with work left, in run order."""
    have = {point_key(p["regime"], p["lambda"], p["seed"]) for p in done}
    out = []
    for seed in options.seeds:
        for lam in options.lambdas:
            todo = [r for r in options.regimes if point_key(r, lam, seed) not in have]
            if todo:
                out.append((lam, seed, todo))
    return out


# -- measuring -------------------------------------------------------------------------------------


def last_token_shift(vlm: Any, records: Sequence[Any], batch_size: int = 32) -> list[float]:
    """Per decoder layer, ``||mean last-token state with the image - mean as text||``."""
    from safegap.gap.collect import last_token_states

    layers = list(range(vlm.adapter.num_layers))
    texts = [r.prompt for r in records]
    with_image = last_token_states(vlm, texts, [r.load_image() for r in records], layers, batch_size)
    as_text = last_token_states(vlm, texts, None, layers, batch_size)
    diff = with_image.mean(dim=0) - as_text.mean(dim=0)
    return [float(x) for x in diff.norm(dim=-1)]


def measure_point(
    checkpoint: Path, organism: Path, world: Any, n_prompts: int, run_dir: Path, max_new_tokens: int = 16
) -> dict[str, Any]:
    """Every measure of one checkpoint (see :data:`MEASURES`) of build directory ``organism``; the
    refusal rates come from eval's runner on the organism benchmark (its run in ``run_dir``)."""
    from safegap.eval.defenses import NoDefense
    from safegap.gap.collect import measure_gap
    from safegap.models.loading import load_vlm
    from safegap.organism.diagnostics import organism_records
    from safegap.organism.evaluate import refusal_rates
    from safegap.organism.measures import caption_loss
    from safegap.organism.study import REGAP_LAYERS
    from safegap.organism.study_eval import evaluate_organism
    from safegap.organism.understanding import accuracy_by_kind, understanding_outcomes

    vlm = load_vlm(checkpoint)
    records = organism_records(world, "eval", GAP_RECORDS)
    gap = measure_gap(vlm, records, layers="all", batch_size=32, probe_layer=None)
    at = {layer.layer: layer for layer in gap.layers}
    shift = last_token_shift(vlm, records)
    outcomes = evaluate_organism(
        vlm, checkpoint, organism, "none", NoDefense(), SWEEP_CONDITIONS, n_prompts, max_new_tokens, run_dir
    )
    rates = refusal_rates(outcomes)
    return {
        "mir": float(gap.mir),
        "mir_layer": float(at[REGAP_LAYERS[0]].fd),
        "centroid_gap": float(np.mean(gap.per_layer("centroid_l2"))),
        "last_token_shift_norm": float(np.mean(shift)),
        TARGET: rates["benign_image"]["harmful_refusal"],
        SECOND_TARGET: rates["blank_image"]["harmful_refusal"],
        "harmful_refusal_text": rates["text"]["harmful_refusal"],
        "benign_refusal_benign_image": rates["benign_image"]["benign_refusal"],
        "image_understanding": accuracy_by_kind(understanding_outcomes(vlm, world))["all"],
        "caption_loss": caption_loss(vlm, world),
        "per_layer": {
            "mir": gap.mir_per_layer,
            "centroid_gap": gap.per_layer("centroid_l2"),
            "last_token_shift_norm": shift,
        },
    }


#: progress(message, done, total)
SweepProgress = Callable[[str, float, int], None]


def run_sweep(
    options: SweepOptions, out_dir: str | Path, progress: SweepProgress | None = None
) -> dict[str, Any]:
    """Build and measure every point not yet in ``points.jsonl``; write ``sweep.json/.md/.png``."""
    from safegap.organism.build import make_world
    from safegap.organism.regimes import regime_checkpoint
    from safegap.organism.study import ensure_organism

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "points.jsonl"
    todo = pending(options, read_points(log))
    world = make_world(options.config)
    for k, (lam, seed, regimes) in enumerate(todo):
        if progress is not None:
            progress(f"lambda {lam:g} seed {seed}: building", k, len(todo))
        variant = sweep_variant(lam, options.config)
        start = time.perf_counter()
        path, build = ensure_organism(out, variant, seed, options.config, options.cache_dir, snapshots=True)
        build_s = time.perf_counter() - start
        for regime in regimes:
            if progress is not None:
                progress(f"lambda {lam:g} seed {seed} {regime}: measuring", k + 0.5, len(todo))
            start = time.perf_counter()
            run_dir = out / "runs" / f"{regime}__lambda{lam:g}__seed{seed}"
            checkpoint = regime_checkpoint(path, regime)
            values = measure_point(
                checkpoint, path, world, options.n_prompts, run_dir, options.max_new_tokens
            )
            point = {
                "regime": regime,
                "lambda": float(lam),
                "seed": int(seed),
                "variant": variant.key,
                **values,
                "build_seconds": round(build_s, 1),
                "build_reused": bool(build.get("reused", False)),
                "measure_seconds": round(time.perf_counter() - start, 1),
            }
            append_point(log, point)
    wanted = {point_key(r, lam, s) for r in options.regimes for lam in options.lambdas for s in options.seeds}
    points = [p for p in read_points(log) if point_key(p["regime"], p["lambda"], p["seed"]) in wanted]
    result = aggregate(points, options)
    write_outputs(out, result)
    if progress is not None:
        progress("done", len(todo), len(todo))
    return result


# -- aggregation -----------------------------------------------------------------------------------


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def _interval(stats: list[float], level: float) -> list[float] | None:
    finite = np.asarray([s for s in stats if math.isfinite(s)])
    if finite.size == 0:
        return None
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return [round(float(lo), 4), round(float(hi), 4)]


def correlation(
    x: Sequence[float],
    y: Sequence[float],
    groups: Sequence[int] | None = None,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Spearman r of ``x`` and ``y`` with a percentile bootstrap interval resampling points, and
    (given ``groups``, e.g. seeds) one resampling whole groups. ``None`` where undefined; pairs
    with a non-finite value are left out (``n`` counts the rest)."""
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(xa) & np.isfinite(ya)  # e.g. MIR is NaN where the summed FD is not positive
    xa, ya = xa[keep], ya[keep]
    if groups is not None:
        groups = list(np.asarray(groups)[keep])
    r = _spearman(xa, ya)
    rng = np.random.default_rng(seed)
    n = xa.size
    stats = [_spearman(xa[i], ya[i]) for i in rng.integers(0, n, size=(n_boot, n))] if n >= 3 else []
    out: dict[str, Any] = {
        "spearman": round(r, 4) if math.isfinite(r) else None,
        "ci": _interval(stats, level),
        "n": int(n),
    }
    if groups is not None:
        g = np.asarray(groups)
        ids = sorted(set(g.tolist()))
        members = [np.flatnonzero(g == k) for k in ids]
        clustered = []
        if n >= 3 and len(ids) >= 2:
            for _ in range(n_boot):
                idx = np.concatenate([members[j] for j in rng.integers(0, len(ids), size=len(ids))])
                clustered.append(_spearman(xa[idx], ya[idx]))
        out["ci_seed_clustered"] = _interval(clustered, level)
    return out


def aggregate(points: Sequence[dict[str, Any]], options: SweepOptions) -> dict[str, Any]:
    """``sweep.json`` (module docstring) from measured points."""
    correlations: dict[str, Any] = {}
    by_lambda: dict[str, Any] = {}
    for regime in options.regimes:
        rows = [p for p in points if p["regime"] == regime]
        seeds = [int(p["seed"]) for p in rows]
        table = {}
        for measure in GAP_MEASURES:
            x = [float(p[measure]) for p in rows]
            entry = correlation(x, [float(p[TARGET]) for p in rows], seeds)
            entry["vs_blank_image"] = correlation(x, [float(p[SECOND_TARGET]) for p in rows], seeds)
            table[measure] = entry
        correlations[regime] = table
        by_lambda[regime] = {
            f"{lam:g}": {
                m: round(float(np.mean([p[m] for p in rows if p["lambda"] == lam])), 4)
                for m in MEASURES
                if any(p["lambda"] == lam for p in rows)
            }
            for lam in options.lambdas
        }
    return {
        "reg": options.reg,
        "lambdas": [float(x) for x in options.lambdas],
        "seeds": list(options.seeds),
        "regimes": list(options.regimes),
        "n_prompts": options.n_prompts,
        "target": TARGET,
        "points": sorted(points, key=lambda p: (p["regime"], p["lambda"], p["seed"])),
        "correlations": correlations,
        "by_lambda": by_lambda,
    }


def _fmt(entry: dict[str, Any], key: str = "ci") -> str:
    r, ci = entry["spearman"], entry.get(key)
    return ("-" if r is None else f"{r:+.2f}") + ("" if ci is None else f" [{ci[0]:+.2f}, {ci[1]:+.2f}]")


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# {result['reg']} dose-response sweep",
        "",
        f"lambdas {result['lambdas']}, seeds {result['seeds']}, {result['n_prompts']} eval prompts per set.",
        "Spearman r of each gap measure with harmful refusal across points (regime fixed), 95 % "
        "percentile bootstrap resampling points. Points of one seed share a world and a base, so "
        "they are not independent: the seed-clustered interval (resampling whole seeds) is the "
        "honest one when the two differ.",
        "",
    ]
    for regime, table in result["correlations"].items():
        lines += [
            f"## {regime}",
            "",
            "| measure | r vs benign image [CI] | seed-clustered CI | r vs blank image [CI] | n |",
            "|---|---|---|---|---|",
        ]
        for measure, e in table.items():
            clustered = e.get("ci_seed_clustered")
            cl = "-" if clustered is None else f"[{clustered[0]:+.2f}, {clustered[1]:+.2f}]"
            lines.append(f"| {measure} | {_fmt(e)} | {cl} | {_fmt(e['vs_blank_image'])} | {e['n']} |")
        lines += ["", "| lambda | " + " | ".join(MEASURES) + " |", "|---" * (len(MEASURES) + 1) + "|"]
        for lam, row in result["by_lambda"][regime].items():
            lines.append(
                f"| {lam} | " + " | ".join(f"{row[m]:.3g}" if m in row else "-" for m in MEASURES) + " |"
            )
        lines.append("")
    return "\n".join(lines)


def write_outputs(out: Path, result: dict[str, Any]) -> None:
    from safegap.eval.records import write_atomic
    from safegap.organism.sweep_plot import plot_sweep

    write_atomic(out / "sweep.json", json.dumps(result, indent=1).encode())
    write_atomic(out / "sweep.md", markdown(result).encode())
    plot_sweep(result, out / "sweep.png", TARGET)
