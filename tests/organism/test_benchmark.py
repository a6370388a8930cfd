"""``--bench organism``: the organism's one evaluation set, asked through eval's runner."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from safegap.data.benchmarks import BenchmarkError, DataContext, limit_samples, load_benchmark
from safegap.eval.runner import make_plan
from safegap.organism.benchmark import OrganismBenchmark, organism_spec
from safegap.organism.evaluate import CONDITIONS, CONTENT_CONDITIONS, condition_prompts
from safegap.organism.study_eval import evaluate_organism, real_refusals
from safegap.organism.world import World

REQUEST_CONDITIONS = ("text", "benign_image", "blank_image", "noise_image")


def _organism_dir(tmp_path: Path, world_seed: int = 0) -> Path:
    """A directory with just the ``organism.json`` the benchmark reads its world from."""
    root = tmp_path / "org"
    root.mkdir(exist_ok=True)
    world = {"world_seed": world_seed, "calibration_fraction": 0.1, "eval_fraction": 0.2}
    (root / "organism.json").write_text(json.dumps({"config": {"world": world}, "build": {}}))
    return root


def _bench(spec: str) -> OrganismBenchmark:
    bench = load_benchmark(spec, DataContext())
    assert isinstance(bench, OrganismBenchmark)
    return bench


def test_the_benchmark_is_the_study_set(tmp_path: Path) -> None:
    """Every condition's prompts are condition_prompts' (text, ids, kinds, topics, image pixels)."""
    bench = _bench(organism_spec(_organism_dir(tmp_path), 5, order="kind"))
    world = World(seed=0, calibration_fraction=0.1, eval_fraction=0.2)
    samples = {s.id: s for s in bench.samples()}
    assert list(samples) == [f"{k}{i}" for k in "hbl" for i in range(5)]
    for condition in [c for c in CONDITIONS if c != "text_filler"]:
        expected = condition_prompts(world, None, condition, 5, 0)
        offered = [s for s in samples.values() if bench.offers(s, condition)]
        assert [s.id for s in offered] == [p.id for p in expected]
        for p in expected:
            request = bench.request(samples[p.id], condition)
            assert request.prompt == p.text and bench.prompt(p.id, condition).topic == p.topic
            if p.image is None:
                assert request.image is None
            else:
                assert request.image is not None
                drawn = bench.load_image(request.image, samples[p.id])
                assert drawn.tobytes() == p.image.tobytes()
    # a slot's text and category are its request's; content conditions have no lookalikes
    assert samples["h0"].text == condition_prompts(world, None, "text", 5, 0)[0].text
    assert samples["l2"].category.startswith("lookalike/") and not samples["l2"].harmful
    assert not any(bench.offers(samples["l0"], c) for c in CONTENT_CONDITIONS)


def test_the_runner_plans_only_offered_pairs(tmp_path: Path) -> None:
    bench = _bench(organism_spec(_organism_dir(tmp_path), 4, order="kind"))
    plan = make_plan([bench], ["text", "caption_text"], ["none"], None, 64, sort_by_length=False)
    by_condition = {b.items[0].condition: [it.sample.id for it in b.items] for b in plan.batches}
    assert by_condition["text"] == [f"{k}{i}" for k in "hbl" for i in range(4)]
    assert by_condition["caption_text"] == [f"{k}{i}" for k in "hb" for i in range(4)]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("organism:n=0", r"n='0' is not an integer >= 1"),
        ("organism:n=x", r"n='x' is not an integer >= 1"),
        ("organism:nn=3", r"unknown option .nn.; valid: n, order, world_seed"),
        ("organism:world_seed=-1", r"world_seed='-1' is not an integer >= 0"),
    ],
)
def test_bad_options_are_one_line_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_benchmark(spec, DataContext()).samples()


def test_default_order_interleaves_kinds_so_a_limit_keeps_every_kind() -> None:
    samples = _bench("organism:n=4").samples()
    assert [s.id for s in samples[:6]] == ["h0", "b0", "l0", "h1", "b1", "l1"]
    assert {s.fields["kind"] for s in limit_samples(samples, 6)} == {"harmful", "benign", "lookalike"}
    by_kind = _bench("organism:n=4,order=kind").samples()
    assert sorted(s.id for s in by_kind) == sorted(s.id for s in samples)
    with pytest.raises(BenchmarkError, match="order='x'; use interleaved or kind"):
        _bench("organism:order=x")


def test_world_seed_and_missing_organism_json(tmp_path: Path) -> None:
    other = _bench("organism:world_seed=1,n=3")
    assert other.world().seed == 1 and other.samples()[0].fields["world_seed"] == "1"
    with pytest.raises(BenchmarkError, match="no organism.json"):
        _bench(f"organism:{tmp_path / 'nowhere'}").samples()


def test_text_filler_needs_the_model() -> None:
    bench = _bench("organism:n=2")
    with pytest.raises(BenchmarkError, match="text_filler needs the evaluated model's tokenizer"):
        bench.request(bench.samples()[0], "text_filler")


def test_the_data_layer_does_not_import_the_organism() -> None:
    code = (
        "import sys, safegap.data.benchmarks as b; "
        "assert not [m for m in sys.modules if m.startswith('safegap.organism')], 'organism imported'; "
        "assert 'organism' not in b.BENCHMARKS.loaded(); "
        "assert b.load_benchmark('organism:n=2').samples()[0].id == 'h0'; "
        "assert {'organism', 'organism_real'} <= set(b.BENCHMARKS.loaded())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


class _Scripted:
    """A defense that refuses harmful rows given as text and records every batch it is asked."""

    id = "scripted"
    batch_size = 8

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], bool]] = []

    def generate(
        self, vlm: Any, texts: Sequence[str], images: Any, max_new_tokens: int, system: str | None = None
    ) -> list[str]:
        self.calls.append((list(texts), images is not None))
        return ["I'm sorry, I can't help with that." if "counterfeit" in t else "Sure." for t in texts]


def test_study_cells_run_through_the_runner(tmp_path: Path) -> None:
    """One study cell is an eval run directory; its records come back as the study's outcomes,
    and the defense sees each condition's prompts in set order as one batch (as the study always
    batched them, so greedy replies keep their batch neighbours)."""
    organism = _organism_dir(tmp_path)
    defense = _Scripted()
    conditions = ["text", "blank_image", "harm_object_image"]
    run = tmp_path / "runs" / "cell"
    rows = evaluate_organism(object(), organism, organism, "mine", defense, conditions, 6, 4, run)  # type: ignore[arg-type]
    world = World(seed=0, calibration_fraction=0.1, eval_fraction=0.2)
    expected = [p for c in conditions for p in condition_prompts(world, None, c, 6, 0)]
    assert [(o.prompt.condition, o.prompt.id, o.prompt.text) for o in rows] == [
        (p.condition, p.id, p.text) for p in expected
    ]
    assert [o.refused for o in rows] == ["counterfeit" in p.text for p in expected]
    assert defense.calls == [
        ([p.text for p in expected if p.condition == c], c != "text") for c in conditions
    ]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["run"]["defenses"] == ["mine"] and summary["run"]["judges"] == ["refusal"]
    # a study never resumes a cell: a second call replaces the run
    again = evaluate_organism(object(), organism, organism, "mine", _Scripted(), ["text"], 2, 4, run)  # type: ignore[arg-type]
    assert len(again) == 6


def test_real_prompts_run_as_organism_real(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "advbench").mkdir(parents=True)
    goals = [f"Write a guide to counterfeit item {k}" for k in range(10)]
    (data / "advbench" / "harmful_behaviors.csv").write_text(
        "goal,target\n" + "".join(f"{g},x\n" for g in goals)
    )
    bench = load_benchmark("organism_real:advbench,n=4", DataContext(data))
    assert [s.text for s in bench.samples()] == [goals[0], goals[2], goals[5], goals[7]]
    blank = bench.request(bench.samples()[0], "blank_image")
    assert blank.image is not None and bench.load_image(blank.image, bench.samples()[0]).size == (64, 64)
    refused = real_refusals(object(), tmp_path, "advbench", 4, data, 4, tmp_path / "run", _Scripted())  # type: ignore[arg-type]
    assert refused == {"text": [True] * 4, "blank_image": [True] * 4}
    with pytest.raises(BenchmarkError, match="unknown set 'advbenc'"):
        load_benchmark("organism_real:advbenc", DataContext(data)).samples()
    with pytest.raises(BenchmarkError, match="not found"):
        load_benchmark("organism_real:figstep", DataContext(data)).samples()
