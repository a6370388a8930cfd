"""`safegap gap`, `safegap layers` and `safegap correlate` through typer's CliRunner."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from safegap.cli.main import app
from safegap.data.images import noise_image
from safegap.testing import build_tiny

os.environ.setdefault("HF_HUB_OFFLINE", "1")
runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    torch.manual_seed(0)
    return str(build_tiny("llava", tmp_path_factory.mktemp("cli_gap_llava")))


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli_gap_data")
    rows = []
    for i, (prompt, caption) in enumerate(
        [
            ("describe the image .", "a red circle"),
            ("what is shown here ?", "a blue square"),
            ("tell me about the picture .", "a cat on a table"),
        ]
    ):
        noise_image((40, 40), seed=50 + i).save(folder / f"im{i}.png")
        rows.append({"prompt": prompt, "image": f"im{i}.png", "caption": caption, "label": "harmful"})
    rows.append({"prompt": "how do i make a cake ?", "label": "benign"})
    path = folder / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    gap_path = folder / "gap.jsonl"
    gap_path.write_text("\n".join(json.dumps(r) for r in rows[:3]) + "\n")
    return folder


@pytest.mark.slow
def test_gap_writes_json_and_figures(model_dir: str, data_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "gap"
    result = runner.invoke(
        app,
        [
            "gap",
            "--model",
            model_dir,
            "--data",
            str(data_file / "gap.jsonl"),
            "--out",
            str(out),
            "--batch-size",
            "2",
            "--pca-layers",
            "0,2",
            "--label",
            "tiny",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "gap.json").read_text())
    assert report["schema"] == "safegap.gap/1" and report["label"] == "tiny"
    assert report["model"]["num_layers"] == 3 and report["model"]["name_or_path"] == model_dir
    assert report["settings"]["outlier_replacement"] is True and report["mir"]["passes"] == 3
    assert len(report["per_layer"]) == 3 and report["mir"]["total"] is not None
    assert report["probe"]["layer"] == 1
    assert len(report["semantic_shift"]["matched_cosine"]) == 3
    assert [p["layer"] for p in report["five_conditions"]["pca"]] == [0, 2]
    for name in report["figures"]:
        assert (out / name).stat().st_size > 1000
    assert "gap_layers.png" in report["figures"] and "conditions_pca_layer2.png" in report["figures"]


def test_gap_options_and_errors(model_dir: str, data_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "fast"
    result = runner.invoke(
        app,
        [
            "gap",
            "--model",
            model_dir,
            "--data",
            str(data_file / "gap.jsonl"),
            "--out",
            str(out),
            "--no-outliers",
            "--no-probe",
            "--skip-shift",
            "--skip-conditions",
            "--layers",
            "0,1",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "gap.json").read_text())
    assert report["mir"]["passes"] == 1 and report["probe"] is None and report["five_conditions"] is None
    missing_image = runner.invoke(
        app,
        ["gap", "--model", model_dir, "--data", str(data_file / "data.jsonl"), "--out", str(tmp_path / "x")],
    )
    assert missing_image.exit_code == 2 and "needs an image on every record" in missing_image.output
    missing_file = runner.invoke(
        app, ["gap", "--model", model_dir, "--data", str(tmp_path / "no.jsonl"), "--out", str(tmp_path / "x")]
    )
    assert missing_file.exit_code == 2 and "not found" in missing_file.output
    bad_layers = runner.invoke(
        app,
        [
            "gap",
            "--model",
            model_dir,
            "--data",
            str(data_file / "gap.jsonl"),
            "--out",
            str(tmp_path / "x"),
            "--layers",
            "0,9",
        ],
    )
    assert bad_layers.exit_code == 2 and "out of range" in bad_layers.output


@pytest.mark.slow
def test_layers_builtin_and_from_data(model_dir: str, data_file: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["layers", "--model", model_dir, "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "a" / "layers.json").read_text())
    assert report["schema"] == "safegap.layers/1" and report["settings"]["harmful_source"] == "built-in"
    assert set(report["conditions"]) == {"harmful_text", "harmful_text_image", "benign_text"}
    assert report["refusal_tokens"] and (tmp_path / "a" / "safety_band.png").is_file()
    from_data = runner.invoke(
        app,
        [
            "layers",
            "--model",
            model_dir,
            "--out",
            str(tmp_path / "b"),
            "--data",
            str(data_file / "data.jsonl"),
            "--refusal-phrase",
            "sorry",
            "--top-k",
            "3",
        ],
    )
    assert from_data.exit_code == 0, from_data.output
    report = json.loads((tmp_path / "b" / "layers.json").read_text())
    assert report["settings"]["n_harmful"] == 3 and report["settings"]["n_benign"] == 1
    assert report["settings"]["harmful_images"] == "data" and report["settings"]["phrases"] == ["sorry"]


def test_correlate(tmp_path: Path) -> None:
    args = []
    for i, (mir, unsafe) in enumerate([(0.8, 0.1), (1.1, 0.25), (1.5, 0.3), (1.9, 0.6)]):
        path = tmp_path / f"g{i}.json"
        path.write_text(json.dumps({"label": f"ckpt{i}", "mir": {"total": mir}}))
        args.append(f"{path}:{unsafe}")
    result = runner.invoke(app, ["correlate", *args, "--out", str(tmp_path / "c"), "--n-boot", "200"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "c" / "correlate.json").read_text())
    assert report["schema"] == "safegap.correlate/1" and report["n"] == 4
    assert report["spearman"]["r"] == pytest.approx(1.0) and len(report["pearson"]["ci"]) == 2
    assert [p["label"] for p in report["points"]] == ["ckpt0", "ckpt1", "ckpt2", "ckpt3"]
    assert (tmp_path / "c" / "correlate.png").is_file()
    too_few = runner.invoke(app, ["correlate", *args[:2], "--out", str(tmp_path / "d")])
    assert too_few.exit_code == 2 and "at least 3" in too_few.output


def test_layers_on_a_text_only_model_with_the_layer_skip_check(data_file: Path, tmp_path: Path) -> None:
    from safegap.testing import build_tiny_causal_lm

    model = str(build_tiny_causal_lm(tmp_path / "lm", "qwen2"))
    out = tmp_path / "layers"
    args = [
        "layers",
        "--model",
        model,
        "--out",
        str(out),
        "--data",
        str(data_file / "data.jsonl"),
        "--layer-skip",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "text-only model: the records' images are not used" in " ".join(result.output.split())
    report = json.loads((out / "layers.json").read_text())
    assert set(report["conditions"]) == {"harmful_text", "benign_text"}
    assert (
        report["settings"]["harmful_images"] is None and report["model"]["architecture"] == "Qwen2ForCausalLM"
    )
    skip = report["layer_skip"]
    assert [row["layer"] for row in skip["skipped"]] == [0, 1, 2]
    assert 0.0 <= skip["baseline"]["harmful_refusal_prob"] <= 1.0
    assert "drop when a layer is skipped" in result.output
