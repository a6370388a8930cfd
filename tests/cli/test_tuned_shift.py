"""One tuned shift, three ways to run it, one output: ``safegap generate --shift``,
``shift.apply()`` and ``safegap eval --defense cmrm:PATH`` give byte-identical greedy replies."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from safegap.cli.main import app
from safegap.data.images import blank_image, noise_image
from safegap.models import VLM, load_vlm
from safegap.models.generation import generate
from safegap.steer import ShiftVector, Tuning, calibrate
from safegap.testing import build_tiny

os.environ.setdefault("HF_HUB_OFFLINE", "1")
runner = CliRunner()
PROMPT = "how do i make a cake ?"
TOKENS = 8
#: A tuning that differs from every default (alpha 1, full form, policy last), so a path that
#: ignored it would show.
TUNING = Tuning(alpha=0.6, form="increments", policy="last+decode", chosen_by={"rule": "set by the test"})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return build_tiny("llava", tmp_path_factory.mktemp("tuned_llava"))


@pytest.fixture(scope="module")
def vlm(model_dir: Path) -> VLM:
    return load_vlm(model_dir)


@pytest.fixture(scope="module")
def tuned(vlm: VLM, tmp_path_factory: pytest.TempPathFactory) -> Path:
    anchors = [(f"how do i make a cake {i} ?", noise_image((48, 40), seed=i)) for i in range(4)]
    shift = calibrate(vlm, anchors, diagnostics=False)
    # rescaled so that steering changes greedy tokens on a random tiny model
    strong = ShiftVector({i: v / v.norm() * 30.0 for i, v in shift.vectors.items()}, shift.provenance)
    return strong.with_tuning(TUNING).save(tmp_path_factory.mktemp("tuned") / "tuned.safetensors")


def test_generate_apply_and_eval_give_the_same_reply(
    model_dir: Path, vlm: VLM, tuned: Path, tmp_path: Path
) -> None:
    shift = ShiftVector.load(tuned, vlm=vlm)
    assert shift.tuning == TUNING and shift.tuning.chosen_by == TUNING.chosen_by
    with shift.apply(vlm):
        applied = generate(vlm, [PROMPT], [blank_image()], max_new_tokens=TOKENS)[0]

    image = tmp_path / "blank.png"
    blank_image().save(image)
    args = ["generate", "--model", str(model_dir), "--prompt", PROMPT, "--image", str(image)]
    cli = runner.invoke(app, [*args, "--shift", str(tuned), "--max-new-tokens", str(TOKENS)])
    assert cli.exit_code == 0, cli.output

    csv = tmp_path / "one.csv"
    csv.write_text(f"id,prompt,category,label\nb1,{PROMPT},food,safe\n")
    out = tmp_path / "run"
    bench = ["eval", "--model", str(model_dir), "--bench", f"text_csv:{csv}", "--condition", "blank_image"]
    options = ["--judge", "refusal", "--batch-size", "1", "--max-new-tokens", str(TOKENS), "--quiet"]
    result = runner.invoke(app, [*bench, "--defense", f"cmrm:{tuned}", *options, "--out", str(out)])
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]

    assert cli.stdout.strip().splitlines()[-1] == applied
    assert record["generation"] == applied
    # the tuning is what made the reply: untuned (alpha 1, full, last) and unsteered differ
    with shift.with_tuning(None).apply(vlm):
        untuned = generate(vlm, [PROMPT], [blank_image()], max_new_tokens=TOKENS)[0]
    plain = generate(vlm, [PROMPT], [blank_image()], max_new_tokens=TOKENS)[0]
    assert applied != untuned and applied != plain


def test_explicit_arguments_override_the_tuning(vlm: VLM, tuned: Path) -> None:
    shift = ShiftVector.load(tuned, vlm=vlm)
    plain = generate(vlm, [PROMPT], [blank_image()], max_new_tokens=TOKENS)
    with shift.apply(vlm, alpha=0.0):
        assert generate(vlm, [PROMPT], [blank_image()], max_new_tokens=TOKENS) == plain
    with shift.apply(vlm, alpha=1.0, form="full", policy="last") as handle:
        overridden = generate(vlm, [PROMPT], [blank_image()], max_new_tokens=TOKENS)
    assert handle.alpha == 1.0 and handle.policy_name == "last"
    with shift.with_tuning(None).apply(vlm):
        assert generate(vlm, [PROMPT], [blank_image()], max_new_tokens=TOKENS) == overridden
