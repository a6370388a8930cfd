"""``organism_vqa`` / ``organism_caption``: plug-in registration, determinism, answers that
match the drawn image, images disjoint from every training pool, and the scores through eval's
runner on a fixed fake model (the scaled test organism cannot name its images; see
test_cli_vqa.py for the organism itself)."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from safegap.data.benchmarks import BENCHMARKS, DataContext, load_benchmark
from safegap.data.benchmarks.base import BenchmarkError, Sample
from safegap.errors import UserError
from safegap.eval.runner import EvalConfig, run_eval
from safegap.organism import data, scenes
from safegap.organism.vqa import QUESTIONS, OrganismCaption, OrganismVQA, training_images, visual_objects
from safegap.organism.world import World
from safegap.plugins import BENCHMARKS_GROUP, declared


def _bench(spec: str) -> Any:
    return load_benchmark(spec, DataContext())


def _image(bench: Any, sample: Sample, condition: str = "image") -> Image.Image:
    request = bench.request(sample, condition)
    return bench.load_image(request.image, sample)


def test_declared_as_plugins_and_registered_on_import() -> None:
    found = declared(BENCHMARKS_GROUP)
    assert found["organism_vqa"] == "safegap.organism.vqa:OrganismVQA"
    assert found["organism_caption"] == "safegap.organism.vqa:OrganismCaption"
    assert (
        BENCHMARKS.get("organism_vqa") is OrganismVQA
        and BENCHMARKS.get("organism_caption") is OrganismCaption
    )


def test_questions_have_one_answer_among_their_candidates() -> None:
    samples = _bench("organism_vqa").samples()
    counts = {c: sum(s.category == c for s in samples) for c in QUESTIONS}
    assert counts == {"object": 3 * len(visual_objects()), "shape": 24, "colour": 24, "count": 24}
    for s in samples:
        assert s.answers is not None and len(s.answers) == 1 and not s.harmful and s.error is None
        cands = s.fields["candidates"].split("|")
        assert s.answers[0] in cands and float(s.fields["chance"]) == pytest.approx(1 / len(cands))
    assert {s.answers[0] for s in samples if s.category == "count"} == {"one", "two"}  # balanced
    assert sum(s.answers == ("one",) for s in samples if s.category == "count") == 12


def test_answers_match_the_image_drawn() -> None:
    bench = _bench("organism_vqa:n=1")
    for s in bench.samples():
        image = _image(bench, s)
        assert image.size == (scenes.SIZE, scenes.SIZE)
        if s.category in ("shape", "colour"):
            (colour, shape) = s.fields["scene"].split()[-2:]
            assert s.answers == ((shape,) if s.category == "shape" else (colour,))
            # the scene caption names exactly the pixels: the one colour is in the image
            assert scenes.COLOURS[colour] in {px for _, px in image.getcolors(4096) or []}
        if s.category == "count":
            assert len(s.fields["scene"].split(" and ")) == ("one", "two").index(s.answers[0]) + 1


def test_deterministic_from_the_seed() -> None:
    a, b, other = _bench("organism_vqa:n=1"), _bench("organism_vqa:n=1"), _bench("organism_vqa:n=1,seed=1")
    assert a.samples() == b.samples()
    pick = a.samples()[-1]
    assert _image(a, pick).tobytes() == _image(b, pick).tobytes()
    assert _image(a, pick).tobytes() != _image(other, other.samples()[-1]).tobytes()
    with pytest.raises(BenchmarkError, match="seed='x'"):
        _bench("organism_vqa:seed=x").samples()
    with pytest.raises(UserError, match="unknown option 'bogus'; valid: instruction, n, seed"):
        _bench("organism_vqa:bogus=1")


def _no_processor(images: object, return_tensors: str) -> dict[str, None]:
    return {"pixel_values": None}


def test_images_are_no_training_rows() -> None:
    seen = training_images(0)
    assert len(seen) > 3000  # the stage 0, 2 and 3 pools (some draws coincide)
    stage3 = data.image_pool(
        random.Random("organism-0-stage3"), 800, World().visual_objects(False), 20, _no_processor
    )
    assert {img.tobytes() for img in stage3.images} <= seen
    for spec in ("organism_vqa", "organism_caption"):
        bench = _bench(spec)
        for s in bench.samples():
            assert _image(bench, s).tobytes() not in seen, s.id
    trained = {*data.CAPTION_INSTRUCTIONS, *data.DETAIL_INSTRUCTIONS, *data.ECHO_INSTRUCTIONS}
    assert not trained & set(QUESTIONS.values())


def _captioner(benches: Sequence[Any]) -> dict[bytes, str]:
    """A fixed fake model: the caption an organism that learned its captions perfectly gives."""
    out = {}
    for bench in benches:
        for s in bench.samples():
            layout = s.fields["image"]
            caption = (
                scenes.object_caption(layout.split(":", 1)[1].rpartition("@")[0])
                if layout.startswith("object:")
                else s.fields["scene"]
            )
            out[_image(bench, s).tobytes()] = caption + "."
    return out


def test_runner_scores_a_fake_captioner_far_above_chance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safegap.eval.defenses as defenses

    oracle = _captioner([_bench("organism_vqa"), _bench("organism_caption")])

    def fake_generate(vlm: Any, texts: Sequence[str], images: Any, **kwargs: Any) -> list[str]:
        images = images or [None] * len(texts)
        return [oracle.get(img.tobytes(), "a picture of a.") if img else "a picture." for img in images]

    monkeypatch.setattr(defenses, "generate", fake_generate)
    cfg = EvalConfig(
        model="fake-captioner",
        benchmarks=["organism_vqa", "organism_caption"],
        conditions=["image", "blank_image", "text"],
        defenses=["none"],
        out=tmp_path / "run",
        progress=False,
        n_boot=200,
        batch_size=64,
    )
    summary = run_eval(cfg, vlm=object()).summary
    assert summary is not None
    assert summary == json.loads((tmp_path / "run" / "summary.json").read_text())
    rows = {(r["benchmark"], r["condition"], r["category"]): r for r in summary["metrics"]}
    vqa = rows[("organism_vqa", "image", "all")]
    n_obj = 3 * len(visual_objects())
    # objects, shapes and colours are read off the caption; a caption never says a count
    assert vqa["accuracy"]["mean"] == pytest.approx((n_obj + 48) / (n_obj + 72))
    assert rows[("organism_vqa", "image", "count")]["accuracy"]["mean"] == 0.0
    assert vqa["chance"] < 0.2 and vqa["accuracy"]["ci"][0] > 3 * vqa["chance"]
    assert rows[("organism_caption", "image", "all")]["accuracy"]["mean"] == 1.0
    for cond in ("blank_image", "text"):  # without the image: no better than chance
        assert rows[("organism_vqa", cond, "all")]["accuracy"]["mean"] <= vqa["chance"]
    assert summary["capability"]["organism_vqa"]["metric"] == "accuracy"
