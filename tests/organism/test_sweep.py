"""``safegap organism sweep``: parsing, resume logic, correlations and the figure on synthetic
points (fast), and one scaled end-to-end sweep (slow)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from safegap.cli.main import app
from safegap.organism.config import OrganismConfig
from safegap.organism.sweep import (
    GAP_MEASURES,
    MEASURES,
    SweepOptions,
    aggregate,
    append_point,
    correlation,
    markdown,
    parse_lambdas,
    parse_reg,
    pending,
    read_points,
    sweep_variant,
    write_outputs,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _points(
    lambdas: list[float], seeds: list[int], regimes: tuple[str, ...] = ("projector", "full")
) -> list[dict[str, Any]]:
    rows = []
    for regime in regimes:
        for lam in lambdas:
            for seed in seeds:
                mir = 10.0 / (1 + lam) + 0.1 * seed
                values = {m: 0.5 for m in MEASURES}
                values.update(
                    mir=mir,
                    mir_layer=mir / 2,
                    centroid_gap=mir / 10,
                    last_token_shift_norm=1.0 + seed,
                    harmful_refusal_benign_image=min(1.0, 0.1 + 0.08 * lam + 0.01 * seed),
                    harmful_refusal_blank_image=0.3,
                )
                rows.append({"regime": regime, "lambda": lam, "seed": seed, "variant": "v", **values})
    return rows


def test_parse_lambdas_and_reg() -> None:
    assert parse_lambdas("0, 0.1,1,10") == [0.0, 0.1, 1.0, 10.0]
    for spec, message in (
        ("0,x", "not a number"),
        ("-1", ">= 0"),
        ("1,1", "twice"),
        (" , ", "no value"),
        ("nan", "finite"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_lambdas(spec)
    assert parse_reg("regap") == "regap"
    with pytest.raises(ValueError, match="only regap is known"):
        parse_reg("tga")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lambda", "0,abc"], "not a number"),
        (["--seeds", "x"], "not an integer"),
        (["--regime", "projector,bogus"], "unknown regime 'bogus'"),
        (["--reg", "tga"], "only regap is known"),
    ],
)
def test_cli_rejects_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["organism", "sweep", "--out", str(tmp_path), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_variant_keys() -> None:
    config = OrganismConfig().scaled(0.05)
    assert sweep_variant(0.0, config).key == "plain"
    keys = {sweep_variant(lam, config).key for lam in (0.1, 0.3, 1.0, 3.0, 10.0)}
    assert len(keys) == 5 and all(k.startswith("regap-w") for k in keys)
    # lambda 1 is the study's ``regap`` variant: same key, same cache
    from safegap.organism.build import make_world
    from safegap.organism.study import VARIANTS

    assert sweep_variant(1.0, config).key == VARIANTS["regap"](config, make_world(config)).key
    loss = sweep_variant(3.0, config).extra_losses[2][0]
    assert loss.weight == 3.0


def test_resume_skips_finished_points(tmp_path: Path) -> None:
    log = tmp_path / "points.jsonl"
    options = SweepOptions(lambdas=[0.0, 1.0], seeds=[0, 1])
    assert len(pending(options, read_points(log))) == 4
    for point in _points([0.0], [0]):
        append_point(log, point)
    append_point(log, _points([1.0], [1], ("full",))[0])
    with log.open("a") as f:  # a torn line from a kill mid-write is ignored
        f.write('{"regime": "proj')
    assert len(read_points(log)) == 3
    todo = pending(options, read_points(log))
    assert (0.0, 0, ["projector", "full"]) not in todo
    assert todo == [(1.0, 0, ["projector", "full"]), (0.0, 1, ["projector", "full"]), (1.0, 1, ["projector"])]


def test_correlation_and_intervals() -> None:
    x = list(range(30))
    up = correlation(x, [v + 0.5 * (v % 3) for v in x], groups=[v % 5 for v in x], n_boot=300)
    assert up["spearman"] > 0.9 and up["n"] == 30
    assert up["ci"][0] <= up["spearman"] <= up["ci"][1] + 1e-9
    assert up["ci_seed_clustered"] is not None
    down = correlation(x, [-v for v in x], n_boot=100)
    assert down["spearman"] == pytest.approx(-1.0)
    holed = correlation([*x[:29], float("nan")], x, groups=[v % 5 for v in x], n_boot=50)
    assert holed["n"] == 29 and holed["spearman"] == pytest.approx(1.0)
    flat = correlation(x, [0.5] * 30, n_boot=50)
    assert flat["spearman"] is None and flat["ci"] is None


def test_aggregate_markdown_and_plot(tmp_path: Path) -> None:
    lambdas, seeds = [0.0, 0.1, 0.3, 1.0, 3.0, 10.0], [0, 1, 2, 3, 4]
    options = SweepOptions(lambdas=lambdas, seeds=seeds)
    result = aggregate(_points(lambdas, seeds), options)
    assert set(result["correlations"]) == {"projector", "full"}
    for regime in ("projector", "full"):
        table = result["correlations"][regime]
        assert set(table) == set(GAP_MEASURES)
        assert table["mir"]["n"] == 30
        assert table["mir"]["spearman"] < -0.8  # less gap, more refusal in the synthetic data
        assert len(table["mir"]["ci"]) == 2 and table["mir"]["ci_seed_clustered"] is not None
        assert table["mir"]["vs_blank_image"]["spearman"] is None  # constant target
        assert set(result["by_lambda"][regime]) == {f"{x:g}" for x in lambdas}
    json.dumps(result)
    md = markdown(result)
    assert "not independent" in md and "| mir |" in md
    write_outputs(tmp_path, result)
    assert (tmp_path / "sweep.png").stat().st_size > 1000
    assert json.loads((tmp_path / "sweep.json").read_text())["correlations"]["full"]["mir"]["n"] == 30
    assert "## projector" in (tmp_path / "sweep.md").read_text()


@pytest.mark.slow
def test_sweep_end_to_end(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("sweep")
    out = root / "out"
    args = [
        "organism", "sweep", "--out", str(out), "--lambda", "0,1", "--seeds", "0",
        "--regime", "projector,full", "--n-prompts", "4", "--scale", "0.04", "--threads", "1",
        "--cache-dir", str(root / "cache"),
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    sweep = json.loads((out / "sweep.json").read_text())
    assert len(sweep["points"]) == 4
    for point in sweep["points"]:
        for measure in MEASURES:
            assert isinstance(point[measure], float), measure
        assert math.isfinite(point["mir"]) and 0 <= point["harmful_refusal_benign_image"] <= 1
    variants = {p["variant"] for p in sweep["points"]}
    assert "plain" in variants and len(variants) == 2
    assert set(sweep["correlations"]["full"]) == set(GAP_MEASURES)
    assert (out / "sweep.png").exists() and (out / "sweep.md").exists()
    # a re-run finds every point done: no build, same points
    before = (out / "points.jsonl").read_text()
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert (out / "points.jsonl").read_text() == before
