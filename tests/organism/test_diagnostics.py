"""Organism diagnostics: the ``organism`` data source, the text-filler control, seed intervals,
one checkpoint on a tiny LLaVA, and (slow) ``safegap organism diagnose`` on scaled-down organisms."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from safegap.cli.main import app
from safegap.gap.data import resolve_data
from safegap.models import VLM, load_vlm
from safegap.organism.diagnostics import (
    GAP_CONDITIONS,
    condition_records,
    filler_records,
    measure_checkpoint,
    parse_source_arg,
    stage_checkpoint,
)
from safegap.organism.diagnostics_aggregate import seed_interval
from safegap.testing import build_tiny

os.environ.setdefault("HF_HUB_OFFLINE", "1")
runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from a second thread; on the shared machine it contends."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def llava(tmp_path_factory: pytest.TempPathFactory) -> VLM:
    torch.manual_seed(0)
    return load_vlm(build_tiny("llava", tmp_path_factory.mktemp("diag_tiny_llava")))


def test_source_arg_parsing_and_errors() -> None:
    assert parse_source_arg("") == ("eval", 0, 64)
    assert parse_source_arg("calibration,n=8") == ("calibration", 0, 8)
    assert parse_source_arg("world_seed=2, n=3") == ("eval", 2, 3)
    for bad, message in [
        ("test", "unknown split 'test'"),
        ("eval,k=1", "organism data: unknown option 'k'; valid: n, world_seed"),
        ("eval,n=x", "n='x' is not an integer"),
        ("eval,n=0", "n must be at least 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_source_arg(bad)


def test_organism_data_source_gives_labelled_records_with_scenes() -> None:
    records = resolve_data("organism:eval,n=3")  # through safegap.gap.data's module plug-in
    assert [r.label for r in records] == ["harmful"] * 3 + ["benign"] * 3
    assert [r.id for r in records] == ["h0", "h1", "h2", "b0", "b1", "b2"]
    assert all(r.caption and r.load_image().size == (64, 64) for r in records)  # type: ignore[union-attr]
    again = resolve_data("organism:eval,n=3")
    assert [r.prompt for r in again] == [r.prompt for r in records]
    assert [r.caption for r in again] == [r.caption for r in records]
    assert [r.prompt for r in resolve_data("organism:calibration,n=3")] != [r.prompt for r in records]
    with pytest.raises(ValueError, match="organism data 'eval,n=-1'"):
        resolve_data("organism:eval,n=-1")


def test_condition_images_and_the_text_filler_control(llava: VLM) -> None:
    records = resolve_data("organism:eval,n=2")
    blank = condition_records(records, "blank_image")
    assert [r.prompt for r in blank] == [r.prompt for r in records] and blank[0].caption is None
    assert blank[0].load_image().getextrema() == ((255, 255),) * 3  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="unknown image condition 'photo'"):
        condition_records(records, "photo")
    rows, fillers = filler_records(records, llava.tokenizer, 16)
    for row, filler, original in zip(rows, fillers, records, strict=True):
        assert (
            row.prompt == f"{filler}\n{original.prompt}" and row.image is None and row.label == original.label
        )
        assert len(llava.tokenizer(filler, add_special_tokens=False)["input_ids"]) == 16
    assert filler_records(records, llava.tokenizer, 16)[1] == fillers  # seeded


def test_seed_interval_is_a_student_t_interval() -> None:
    est = seed_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)  # t(0.975, df=4) * sd / sqrt(n)
    assert est["mean"] == 3.0 and est["n"] == 5
    assert est["ci"] == pytest.approx([3.0 - half, 3.0 + half])
    assert seed_interval([0.1, 0.0, 0.9], probability=True)["ci"][0] == 0.0
    assert seed_interval([2.0, None])["ci"] == [None, None] and seed_interval([None])["mean"] is None


def test_one_checkpoint_measures_image_and_filler_alike(llava: VLM, tmp_path: Path) -> None:
    records = resolve_data("organism:eval,n=3")
    result = measure_checkpoint(llava, records, batch_size=4, out_dir=tmp_path)
    assert set(result["gap"]) == set(GAP_CONDITIONS)
    image_tokens = int(llava.model.config.image_seq_length)
    for condition, entry in result["gap"].items():
        # the filler stands where the image was, with as many tokens
        assert entry["image_tokens"] == len(records) * image_tokens, condition
        assert len(entry["fd"]) == llava.adapter.num_layers and math.isfinite(entry["mir"])
    filler = result["gap"]["text_filler"]["mir"]
    for condition in ("benign_image", "blank_image", "noise_image"):
        assert result["mir_minus_filler"][condition] == pytest.approx(
            result["gap"][condition]["mir"] - filler
        )
    layers = result["layers"]
    assert set(layers["conditions"]) == {"harmful_text", "harmful_text_image", "benign_text"}
    assert layers["conditions"]["harmful_text"]["prompts"] == 3
    assert [row["layer"] for row in layers["layer_skip"]["skipped"]] == list(range(llava.adapter.num_layers))
    # the full reports went to disk, and the compact numbers are theirs
    scene = json.loads((tmp_path / "gap_benign_image" / "gap.json").read_text())
    assert (
        scene["mir"]["total"] == result["gap"]["benign_image"]["mir"] and scene["semantic_shift"] is not None
    )
    assert (tmp_path / "gap_text_filler" / "gap.json").is_file() and (
        tmp_path / "layers" / "layers.json"
    ).is_file()
    # without out_dir the same numbers come from the same code path's pieces
    again = measure_checkpoint(
        llava, records, ("benign_image", "text_filler"), layer_skip=False, batch_size=4
    )
    assert again["gap"]["text_filler"]["mir"] == pytest.approx(filler)
    assert again["layers"]["layer_skip"] is None
    with pytest.raises(ValueError, match="unknown gap condition 'caption'"):
        measure_checkpoint(llava, records, ("caption",))
    with pytest.raises(ValueError, match="need harmful and benign records"):
        measure_checkpoint(llava, records[:3])


def test_stage_checkpoints_and_cli_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint for stage after_stage2"):
        stage_checkpoint(tmp_path, "after_stage2")
    with pytest.raises(ValueError, match="unknown stage 'stage9'"):
        stage_checkpoint(tmp_path, "stage9")
    for args, message in [
        (["--stages", "after_stage2,stage9"], "unknown stage 'stage9'"),
        (["--n-prompts", "0"], "--n-prompts must be at least 1"),
        (["--seeds", "a"], "not an integer"),
        (["--seeds", "0", "--no-build", "--cache-dir", str(tmp_path / "none")], "seed 0: no organism at"),
    ]:
        result = runner.invoke(app, ["organism", "diagnose", "--out", str(tmp_path / "out"), *args])
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split())


@pytest.mark.slow
def test_diagnose_small_organisms(tmp_path: Path) -> None:
    out = tmp_path / "diagnose"
    args = ["organism", "diagnose", "--out", str(out), "--seeds", "5,6"]
    args += ["--n-prompts", "4", "--scale", "0.04", "--threads", "1", "--cache-dir", str(tmp_path / "cache")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "diagnose.json").read_text())
    assert report["schema"] == "safegap.organism.diagnose/1" and report["seeds"] == [5, 6]
    assert report["settings"]["records"] == 8 and "Student-t" in report["settings"]["interval"]
    for seed in ("5", "6"):
        assert Path(report["organisms"][seed], "stages", "after_stage2", "config.json").is_file()
        # stage 2 trains only the projector: the text-only filler control cannot change, the image can
        runs = report["per_seed"][seed]
        stage1, stage2 = runs["after_stage1"]["gap"], runs["after_stage2"]["gap"]
        assert stage2["text_filler"]["mir"] == pytest.approx(stage1["text_filler"]["mir"], rel=1e-9)
        assert stage2["benign_image"]["mir"] != pytest.approx(stage1["benign_image"]["mir"], rel=1e-6)
    agg = report["aggregate"]["after_stage2"]
    mirs = [report["per_seed"][s]["after_stage2"]["gap"]["benign_image"]["mir"] for s in ("5", "6")]
    assert agg["gap"]["benign_image"]["mir"]["mean"] == pytest.approx(sum(mirs) / 2)
    lo, hi = agg["gap"]["benign_image"]["mir"]["ci"]
    assert lo <= sum(mirs) / 2 <= hi
    diffs = [report["per_seed"][s]["after_stage2"]["mir_minus_filler"]["benign_image"] for s in ("5", "6")]
    assert agg["mir_minus_filler"]["benign_image"]["seeds_positive"] == sum(d > 0 for d in diffs)
    assert len(agg["layer_skip"]["skipped"]) == 4 and len(agg["safety_band"]["per_seed"]) == 2
    pooled = report["correlation"]["all_checkpoints"]  # 2 seeds x 3 stages
    assert pooled["n"] == 6 and report["correlation"]["per_stage"]["final"] is None  # 2 points
    assert {p["label"] for p in pooled["points"]} == {
        f"seed{s} {t}" for s in (5, 6) for t in report["stages"]
    }
    for name in ("fd_after_stage2.png", "lens_final.png", "diagnose.md"):
        assert (out / name).is_file(), name
    assert (out / "diagnose.md").read_text().startswith("# Organism diagnostics")
    assert "organism diagnostics, after_stage2" in result.output
