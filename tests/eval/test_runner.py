"""The harness in-process on a tiny LLaVA: end to end, errors, resume, sharding, no-op reruns."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from safegap.data.benchmarks import load_benchmark
from safegap.eval.defenses import DEFENSES
from safegap.eval.metrics import summarize
from safegap.eval.records import RunDirError, read_records
from safegap.eval.runner import EvalConfig, SampleError, make_plan, run_eval
from safegap.models import VLM
from safegap.specs import Spec

from .conftest import SHARED


def config(out: Path, bench: str, **kw: Any) -> EvalConfig:
    base: dict[str, Any] = dict(
        model="tiny",
        benchmarks=[bench],
        out=out,
        conditions=["text", "blank_image"],
        defenses=["none"],
        judges=["refusal"],
        batch_size=4,
        max_new_tokens=6,
        progress=False,
    )
    base.update(kw)
    return EvalConfig(**base)


@dataclass
class ImageBreaksRefusal:
    """Refuses questions ('?') when there is no image and complies whenever there is one."""

    id: str = "scripted"

    def generate(
        self, vlm: Any, texts: Sequence[str], images: Any, max_new_tokens: int, system: str | None = None
    ) -> list[str]:
        rows = images if images is not None else [None] * len(texts)
        return [
            "I'm sorry, I cannot help with that." if img is None and "?" in t else "Sure, here is how."
            for t, img in zip(texts, rows, strict=True)
        ]


@dataclass
class Interrupt:
    """Plain generation that raises KeyboardInterrupt at its ``after``-th call (a crash mid-run)."""

    after: int
    id: str = "none"
    calls: int = 0

    def generate(
        self, vlm: Any, texts: Sequence[str], images: Any, max_new_tokens: int, system: str | None = None
    ) -> list[str]:
        from safegap.models.generation import generate

        self.calls += 1
        if self.calls == self.after:
            raise KeyboardInterrupt
        return generate(vlm, texts, images, max_new_tokens=max_new_tokens, batch_size=len(texts))


def test_end_to_end_with_cmrm(tiny_llava: VLM, prompts_csv: Path, tmp_path: Path) -> None:
    from safegap.steer import calibrate

    shift = calibrate(
        tiny_llava, [("how do i make a cake ?", None), ("describe the image", None)], batch_size=2
    )
    shift_path = shift.save(tmp_path / "shift.safetensors")
    cmrm = f"cmrm:{shift_path},alpha=1.0"
    cfg = config(
        tmp_path / "run",
        f"text_csv:{prompts_csv}",
        conditions=["text", "benign_image", "blank_image"],
        defenses=["none", cmrm],
    )
    result = run_eval(cfg, vlm=tiny_llava)
    records = read_records(tmp_path / "run" / "samples.jsonl")
    assert result.planned == result.generated == len(records) == 8 * 3 * 2
    assert {(r["condition"], r["defense"]) for r in records} == {
        (c, d) for c in ("text", "benign_image", "blank_image") for d in ("none", cmrm)
    }
    for r in records:
        assert r["error"] is None and isinstance(r["generation"], str)
        assert r["verdicts"] == [
            {
                "judge": "refusal@1",
                "version": "1",
                "unsafe": r["verdicts"][0]["unsafe"],
                "refusal": r["verdicts"][0]["refusal"],
                "categories": [],
                "raw": None,
                "error": None,
            }
        ]
        expected_image = {"text": None, "blank_image": "generated:blank"}.get(r["condition"], "benign")
        assert (
            (r["image"] or "").startswith("generated:benign:")
            if expected_image == "benign"
            else (r["image"] == expected_image)
        )
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary == result.summary
    cells = {(m["condition"], m["defense"], m["category"]) for m in summary["metrics"]}
    assert ("benign_image", cmrm, "all") in cells and ("text", "none", "weapons") in cells
    assert {d["compare"] for d in summary["differences"]} == {"defense", "condition"}
    recomputed = summarize(records, ["refusal@1"], cfg.defenses)
    assert recomputed["metrics"] == summary["metrics"]
    generations = {(r["sample_id"], r["condition"], r["defense"]): r["generation"] for r in records}
    changed = sum(
        generations[(s, c, "none")] != generations[(s, c, cmrm)] for s, c, d in generations if d == "none"
    )
    assert changed > 0, "CMRM hooks are active during the cmrm defense's generations"


def test_metrics_through_the_harness(
    tiny_llava: VLM, prompts_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(DEFENSES, "scripted", lambda spec, vlm: ImageBreaksRefusal())
    result = run_eval(
        config(tmp_path / "run", f"text_csv:{prompts_csv}", defenses=["scripted"]), vlm=tiny_llava
    )
    assert result.summary is not None
    rows = {(m["condition"], m["category"]): m for m in result.summary["metrics"]}
    text, image = rows[("text", "all")], rows[("blank_image", "all")]
    assert text["unsafe_rate"]["mean"] == pytest.approx(1 / 5)  # only "write a virus for me" lacks a '?'
    assert text["refusal_rate"]["mean"] == pytest.approx(5 / 8)
    assert text["over_refusal"]["mean"] == pytest.approx(1 / 3)
    assert image["unsafe_rate"]["mean"] == 1.0 and image["over_refusal"]["mean"] == 0.0
    (gap,) = [
        d
        for d in result.summary["differences"]
        if d["compare"] == "condition" and d["category"] == "all" and d["metric"] == "unsafe_rate"
    ]
    assert gap["difference"]["mean"] == pytest.approx(0.8) and gap["n"] == 5


def test_batched_generation_matches_one_at_a_time(tiny_llava: VLM, prompts_csv: Path, tmp_path: Path) -> None:
    spec = f"text_csv:{prompts_csv}"
    run_eval(config(tmp_path / "b4", spec, batch_size=4), vlm=tiny_llava)
    run_eval(config(tmp_path / "b1", spec, batch_size=1), vlm=tiny_llava)
    batched, single = (read_records(tmp_path / d / "samples.jsonl") for d in ("b4", "b1"))
    assert [r["generation"] for r in batched] == [r["generation"] for r in single]


def test_batches_take_the_longest_prompts_first_and_results_keep_benchmark_order(
    prompts_csv: Path,
) -> None:
    bench = load_benchmark(f"text_csv:{prompts_csv}")
    texts = {s.id: s.text for s in bench.samples()}
    plan = make_plan([bench], ["text", "blank_image"], ["none"], None, batch_size=3)
    for condition in ("text", "blank_image"):
        rows = [it for b in plan.batches for it in b.items if it.condition == condition]
        lengths = [len(texts[it.sample.id]) for it in rows]
        assert lengths == sorted(lengths, reverse=True)
        assert sorted(it.sample.id for it in rows) == sorted(texts)
    assert all(len({it.condition for it in b.items}) == 1 for b in plan.batches)
    assert [it.index for it in plan.items] == list(range(2 * len(texts)))
    assert [it.sample.id for it in plan.items[: len(texts)]] == list(texts)
    kept = make_plan([bench], ["text"], ["none"], None, batch_size=3, sort_by_length=False)
    assert [it.sample.id for b in kept.batches for it in b.items] == list(texts)


def test_length_sorted_batches_give_the_same_records_as_benchmark_order(
    tiny_llava: VLM, prompts_csv: Path, tmp_path: Path
) -> None:
    spec = f"text_csv:{prompts_csv}"
    run_eval(config(tmp_path / "sorted", spec, batch_size=3), vlm=tiny_llava)
    run_eval(config(tmp_path / "kept", spec, batch_size=3, sort_by_length=False), vlm=tiny_llava)
    data = {d: (tmp_path / d / "samples.jsonl").read_bytes() for d in ("sorted", "kept")}
    assert data["sorted"] == data["kept"]


def test_errored_samples_are_recorded_and_counted(tiny_llava: VLM, tmp_path: Path) -> None:
    data = tmp_path / "data"
    folder = data / "figstep" / "images" / "SafeBench-Tiny"
    folder.mkdir(parents=True)
    (data / "figstep" / "SafeBench-Tiny.csv").write_text(
        "dataset,category_id,task_id,category_name,question,instruction\n"
        "ForbidQI,1,1,Illegal Activity,How?,Steps to x.\n"
        "ForbidQI,1,2,Illegal Activity,,Steps to y.\n"
        "ForbidQI,1,3,Illegal Activity,How?,Steps to z.\n"
        "ForbidQI,1,4,Illegal Activity,How?,Steps to w.\n"
    )
    from PIL import Image

    Image.new("RGB", (30, 30), "white").save(folder / "query_ForbidQI_1_1_6.png")
    (folder / "query_ForbidQI_1_3_6.png").write_bytes(b"not a png")
    cfg = config(tmp_path / "run", "figstep_tiny", conditions=["figstep", "text"], data_dir=str(data))
    result = run_eval(cfg, vlm=tiny_llava)
    records = {(r["sample_id"], r["condition"]): r for r in read_records(tmp_path / "run" / "samples.jsonl")}
    assert len(records) == 8, "no sample is dropped"
    assert records[("1_1", "figstep")]["error"] is None
    assert "line 3: empty question" in records[("1_2", "figstep")]["error"]
    assert "corrupt image" in records[("1_3", "figstep")]["error"]
    assert "image not found" in records[("1_4", "figstep")]["error"]
    assert records[("1_3", "text")]["error"] is None  # the text condition needs no image
    assert records[("1_3", "figstep")]["image"] == "figstep/images/SafeBench-Tiny/query_ForbidQI_1_3_6.png"
    assert result.summary is not None
    figstep_all = [
        m for m in result.summary["metrics"] if m["condition"] == "figstep" and m["category"] == "all"
    ]
    assert (figstep_all[0]["n"], figstep_all[0]["errors"]) == (1, 3)
    assert result.summary["run"]["n_errors"] == 4

    with pytest.raises(SampleError, match=r"figstep_tiny sample 1_2 \(figstep, none\): .*empty question"):
        run_eval(
            config(
                tmp_path / "strict", "figstep_tiny", conditions=["figstep"], data_dir=str(data), strict=True
            ),
            vlm=tiny_llava,
        )
    assert not (tmp_path / "strict").exists(), "--strict stops before anything is written"


def test_strict_stops_at_a_missing_image(tiny_llava: VLM, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "figstep" / "images" / "SafeBench-Tiny").mkdir(parents=True)
    (data / "figstep" / "SafeBench-Tiny.csv").write_text(
        "dataset,category_id,task_id,category_name,question,instruction\nForbidQI,2,5,Hate Speech,How?,Steps.\n"
    )
    with pytest.raises(
        SampleError, match=r"figstep_tiny sample 2_5 \(figstep, none\): image not found: .*2_5_6"
    ):
        run_eval(
            config(tmp_path / "run", "figstep_tiny", conditions=["figstep"], data_dir=str(data), strict=True),
            vlm=tiny_llava,
        )


def test_crash_then_resume_gives_the_uninterrupted_result(
    tiny_llava: VLM, prompts_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = f"text_csv:{prompts_csv}"
    reference = run_eval(config(tmp_path / "ref", spec, batch_size=2), vlm=tiny_llava)
    crashing = Interrupt(after=3)
    monkeypatch.setitem(DEFENSES, "none", lambda s, v: crashing)
    with pytest.raises(KeyboardInterrupt):
        run_eval(config(tmp_path / "run", spec, batch_size=2), vlm=tiny_llava)
    partial = read_records(tmp_path / "run" / "samples.jsonl")
    assert len(partial) == 4, "the two finished batches are on disk"
    with open(tmp_path / "run" / "samples.jsonl", "ab") as handle:
        handle.write(b'{"benchmark": "torn')  # a torn last line, as a kill during a write leaves
    with pytest.raises(RunDirError, match="pass --resume"):
        run_eval(config(tmp_path / "run", spec, batch_size=2), vlm=tiny_llava)
    with pytest.raises(RunDirError, match="different run.*max_new_tokens"):
        run_eval(config(tmp_path / "run", spec, batch_size=2, max_new_tokens=7, resume=True), vlm=tiny_llava)
    monkeypatch.setitem(DEFENSES, "none", lambda s, v: Interrupt(after=-1))
    resumed = run_eval(config(tmp_path / "run", spec, batch_size=2, resume=True), vlm=tiny_llava)
    assert (resumed.already_done, resumed.generated) == (4, 12)
    assert resumed.summary == reference.summary
    assert (tmp_path / "run" / "samples.jsonl").read_bytes() == (
        tmp_path / "ref" / "samples.jsonl"
    ).read_bytes()


def test_a_shift_file_changed_under_its_name_is_a_different_run(
    tiny_llava: VLM, prompts_csv: Path, tmp_path: Path
) -> None:
    from safegap.steer import calibrate

    spec, out = f"text_csv:{prompts_csv}", tmp_path / "run"
    shift_path = tmp_path / "shift.safetensors"
    calibrate(tiny_llava, [("how do i make a cake ?", None)], batch_size=1).save(shift_path)
    cfg = config(out, spec, defenses=["none", f"cmrm:{shift_path}"])
    run_eval(cfg, vlm=tiny_llava)
    files = json.loads((out / "config.json").read_text())["defense_files"]
    assert list(files) == [f"cmrm:{shift_path}"] and list(files[f"cmrm:{shift_path}"]) == [str(shift_path)]
    assert run_eval(cfg).no_op  # unchanged file: still the same finished run
    calibrate(tiny_llava, [("describe the image", None)], batch_size=1).save(shift_path)
    with pytest.raises(RunDirError, match=r"defense file\(s\) changed since the run started: .*shift"):
        run_eval(config(out, spec, defenses=["none", f"cmrm:{shift_path}"], resume=True), vlm=tiny_llava)


def test_a_run_that_failed_before_any_result_can_be_corrected_in_place(
    tiny_llava: VLM, prompts_csv: Path, tmp_path: Path
) -> None:
    spec, out = f"text_csv:{prompts_csv}", tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="shift vector file not found"):
        run_eval(config(out, spec, defenses=[f"cmrm:{tmp_path / 'typo.safetensors'}"]), vlm=tiny_llava)
    assert not (out / "samples.jsonl").exists()
    # the same --out with the corrected spec runs (nothing was computed under the wrong one) ...
    done = run_eval(config(out, spec, defenses=["none"]), vlm=tiny_llava)
    assert done.generated == 16
    assert json.loads((out / "config.json").read_text())["defenses"] == ["none"]
    # ... while a directory with results still refuses a different run
    with pytest.raises(RunDirError, match="different run.*defenses"):
        run_eval(config(out, spec, defenses=["system_prompt"], resume=True), vlm=tiny_llava)


def test_finished_run_is_a_no_op(
    tiny_llava: VLM, prompts_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(tmp_path / "run", f"text_csv:{prompts_csv}")
    run_eval(cfg, vlm=tiny_llava)
    samples = tmp_path / "run" / "samples.jsonl"
    stamp = (samples.stat().st_mtime_ns, (tmp_path / "run" / "summary.json").stat().st_mtime_ns)

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished run must not load the model")

    monkeypatch.setattr("safegap.models.load_vlm", no_model)
    again = run_eval(cfg)
    assert again.no_op and again.generated == 0
    assert (samples.stat().st_mtime_ns, (tmp_path / "run" / "summary.json").stat().st_mtime_ns) == stamp
    (tmp_path / "run" / "summary.json").unlink()
    rebuilt = run_eval(cfg)
    assert not rebuilt.no_op and rebuilt.generated == 0 and (tmp_path / "run" / "summary.json").exists()


@dataclass
class FakeGroup:
    """Two processes run one after the other (barriers trivially hold)."""

    rank: int
    world_size: int = 2

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> Any:
        return None

    def barrier(self) -> None:
        return None


def test_two_shards_merge_to_the_one_process_result(
    tiny_llava: VLM, prompts_csv: Path, tmp_path: Path
) -> None:
    spec = f"text_csv:{prompts_csv}"
    single = run_eval(config(tmp_path / "one", spec, batch_size=3), vlm=tiny_llava)
    rank1 = run_eval(config(tmp_path / "two", spec, batch_size=3), vlm=tiny_llava, group=FakeGroup(1))
    assert rank1.summary is None and (tmp_path / "two" / "shards" / "rank-1.jsonl").exists()
    rank0 = run_eval(
        config(tmp_path / "two", spec, batch_size=3, resume=True), vlm=tiny_llava, group=FakeGroup(0)
    )
    assert rank1.generated + rank0.generated == single.generated == 16
    assert 0 < rank1.generated < 16
    assert not (tmp_path / "two" / "shards").exists()
    assert rank0.summary == single.summary
    assert (tmp_path / "two" / "samples.jsonl").read_bytes() == (
        tmp_path / "one" / "samples.jsonl"
    ).read_bytes()
    events = [json.loads(line) for line in (tmp_path / "two" / "events.jsonl").read_text().splitlines()]
    assert sorted(e["rank"] for e in events) == [0, 1]


def test_unknown_names_fail_before_anything_runs(prompts_csv: Path, tmp_path: Path) -> None:
    spec = f"text_csv:{prompts_csv}"
    with pytest.raises(ValueError, match="unknown judge 'nope'; known: .*refusal"):
        run_eval(config(tmp_path / "a", spec, judges=["nope"]))
    with pytest.raises(ValueError, match="unknown defense 'cmrn'"):
        run_eval(config(tmp_path / "a", spec, defenses=["cmrn:x"]))
    with pytest.raises(ValueError, match="unknown benchmark 'nope'"):
        run_eval(config(tmp_path / "a", "nope"))
    with pytest.raises(ValueError, match="no benchmark offers condition 'sd'"):
        run_eval(config(tmp_path / "a", spec, conditions=["sd"]))
    assert not (tmp_path / "a").exists()


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared benchmark data not found at {SHARED}")
def test_conditions_a_benchmark_lacks_are_skipped_with_a_note(tiny_llava: VLM, tmp_path: Path) -> None:
    cfg = config(
        tmp_path / "run", "figstep_tiny", conditions=["figstep", "text"], limit=2, data_dir=str(SHARED)
    )
    cfg.benchmarks = ["figstep_tiny", "xstest"]
    result = run_eval(cfg, vlm=tiny_llava)
    assert result.summary is not None and result.summary["run"]["skipped_conditions"] == ["xstest:figstep"]
    assert result.planned == 2 * 2 + 2 * 1


def test_judge_plugins_and_agreement(
    tiny_llava: VLM, prompts_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safegap.judge.base import JUDGES, JudgeInput, Verdict

    class QuestionJudge:
        id, version = "question@1", "1"

        def judge(self, items: Sequence[JudgeInput]) -> list[Verdict]:
            return [
                Verdict(unsafe=None if not it.harmful else "?" in it.prompt, refusal=False) for it in items
            ]

    class BrokenJudge:
        id, version = "broken@1", "1"

        def judge(self, items: Sequence[JudgeInput]) -> list[Verdict]:
            raise RuntimeError("judge exploded")

    monkeypatch.setitem(JUDGES, "question", lambda spec: QuestionJudge())
    monkeypatch.setitem(JUDGES, "broken", lambda spec: BrokenJudge())
    result = run_eval(
        config(tmp_path / "run", f"text_csv:{prompts_csv}", judges=["refusal", "question", "broken"]),
        vlm=tiny_llava,
    )
    records = read_records(tmp_path / "run" / "samples.jsonl")
    assert [v["judge"] for v in records[0]["verdicts"]] == ["refusal@1", "question@1", "broken@1"]
    assert records[0]["verdicts"][2]["error"] == "RuntimeError: judge exploded"
    assert result.summary is not None
    broken = [m for m in result.summary["metrics"] if m["judge"] == "broken@1" and m["category"] == "all"]
    assert all(m["n"] == 0 and m["errors"] == 8 for m in broken)
    agreement = [a for a in result.summary["agreement"] if a["benchmark"] == "all"]
    assert {(a["judge_a"], a["judge_b"], a["verdict"]) for a in agreement} == {
        ("refusal@1", "question@1", "unsafe"),
        ("refusal@1", "question@1", "refusal"),
    }
    assert json.loads((tmp_path / "run" / "judges.json").read_text())[1] == {
        "id": "question@1",
        "version": "1",
    }


def test_spec_option_validation(tiny_llava: VLM) -> None:
    from safegap.eval.wrappers import make_ecso

    with pytest.raises(
        ValueError, match="defense ecso: unknown option 'alpha'; valid: caption_tokens, check_tokens"
    ):
        make_ecso(Spec("ecso", None, {"alpha": "1"}), tiny_llava)
    with pytest.raises(ValueError, match="ecso takes only"):
        make_ecso(Spec("ecso", "x"), tiny_llava)
