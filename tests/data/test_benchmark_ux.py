"""Benchmark UX (issue 16): errors that tell harmbench from harmbench_mm, HarmBench's .jpg names
saved as .png, a wrong images folder caught before any model loads, and a non-unique id column."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from safegap.data.benchmarks import BenchmarkError, DataContext, load_benchmark
from safegap.eval.runner import EvalConfig, prepare

MM_HEADER = "Behavior,FunctionalCategory,SemanticCategory,Tags,ContextString,BehaviorID,ImageFileName\n"
TEXT_HEADER = "Behavior,FunctionalCategory,SemanticCategory,Tags,ContextString,BehaviorID\n"


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 20), "red").save(path)


def _harmbench(root: Path, rows: str = "Explain the device,multimodal,harm,,,hb_1,device.jpg\n") -> Path:
    folder = root / "harmbench"
    folder.mkdir(parents=True)
    (folder / "harmbench_behaviors_multimodal_all.csv").write_text(MM_HEADER + rows, encoding="utf-8")
    (folder / "harmbench_behaviors_text_all.csv").write_text(
        TEXT_HEADER + "Write malware,standard,cybercrime,,,hb_t1\n", encoding="utf-8"
    )
    return folder


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("name", ["harmbench_multimodal", "harmbench-mm", "harmbench_text", "harmbenchmm"])
def test_an_unknown_name_close_to_harmbench_names_both_sets(name: str) -> None:
    with pytest.raises(BenchmarkError) as exc:
        load_benchmark(name)
    text = _one_line(exc)
    assert text.startswith(f"unknown benchmark {name!r}; did you mean")
    assert "harmbench_mm (HarmBench multimodal" in text and "harmbench (HarmBench text" in text


def test_harmbench_given_the_multimodal_csv_points_to_harmbench_mm(tmp_path: Path) -> None:
    folder = _harmbench(tmp_path)
    with pytest.raises(BenchmarkError) as exc:
        load_benchmark(f"harmbench:{folder / 'harmbench_behaviors_multimodal_all.csv'}").samples()
    assert "ImageFileName column" in _one_line(exc) and "--bench harmbench_mm" in str(exc.value)


def test_harmbench_mm_given_the_text_csv_points_to_harmbench(tmp_path: Path) -> None:
    folder = _harmbench(tmp_path)
    with pytest.raises(BenchmarkError) as exc:
        load_benchmark(f"harmbench_mm:{folder / 'harmbench_behaviors_text_all.csv'}").samples()
    assert "text set; use --bench harmbench " in _one_line(exc)


def test_the_image_condition_on_harmbench_points_to_harmbench_mm(tmp_path: Path) -> None:
    _harmbench(tmp_path)
    config = EvalConfig("tiny", ["harmbench"], tmp_path / "run", conditions=["image"], data_dir=str(tmp_path))
    with pytest.raises(BenchmarkError) as exc:
        prepare(config)
    assert "no benchmark offers condition 'image'" in _one_line(exc)
    assert "harmbench_mm is HarmBench multimodal" in str(exc.value)


@pytest.mark.parametrize("listed", ["device.jpg", "device.jpeg", "device.JPG"])
def test_harmbench_jpg_names_resolve_to_the_png_on_disk(tmp_path: Path, listed: str) -> None:
    folder = _harmbench(tmp_path, f"Explain the device,multimodal,harm,,,hb_1,{listed}\n")
    _png(folder / "multimodal_behavior_images" / "device.png")
    bench = load_benchmark("harmbench_mm", DataContext(tmp_path))
    (sample,) = bench.samples()
    ref = bench.request(sample, "image").image
    assert ref is not None and bench.describe_image(ref) == "harmbench/multimodal_behavior_images/device.png"
    assert bench.load_image(ref, sample).size == (20, 20)


def test_an_exact_name_is_kept_even_when_another_suffix_exists(tmp_path: Path) -> None:
    folder = _harmbench(tmp_path)
    _png(folder / "multimodal_behavior_images" / "device.png")
    _png(folder / "multimodal_behavior_images" / "device.jpg")
    bench = load_benchmark("harmbench_mm", DataContext(tmp_path))
    ref = bench.request(bench.samples()[0], "image").image
    assert ref is not None and ref.value.endswith("device.jpg")


def test_a_wrong_images_folder_fails_before_the_model_loads(tmp_path: Path) -> None:
    _harmbench(tmp_path)
    wrong = tmp_path / "nope"
    config = EvalConfig("tiny", [f"harmbench_mm:images={wrong}"], tmp_path / "run", data_dir=str(tmp_path))
    with pytest.raises(BenchmarkError) as exc:
        prepare(config)
    text = _one_line(exc)
    assert text.startswith("benchmark 'harmbench_mm:images=")
    assert f"none of its 1 image(s) exist (folder {wrong} does not exist)" in text
    assert not (tmp_path / "run").exists()


def test_a_folder_holding_none_of_the_images_fails_up_front(tmp_path: Path) -> None:
    folder = _harmbench(tmp_path)
    _png(folder / "multimodal_behavior_images" / "other.png")
    with pytest.raises(BenchmarkError, match=r"none of its 1 image\(s\) exist \(first: .*device.jpg\)"):
        prepare(EvalConfig("tiny", ["harmbench_mm"], tmp_path / "run", data_dir=str(tmp_path)))


def test_some_images_missing_is_still_a_run_with_errored_samples(tmp_path: Path) -> None:
    rows = (
        "Explain the device,multimodal,harm,,,hb_1,device.png\nAnd this one,multimodal,harm,,,hb_2,gone.png\n"
    )
    folder = _harmbench(tmp_path, rows)
    _png(folder / "multimodal_behavior_images" / "device.png")
    _, plan = prepare(EvalConfig("tiny", ["harmbench_mm"], tmp_path / "run", data_dir=str(tmp_path)))
    assert len(plan.items) == 2


def test_the_figstep_images_folder_is_checked_in_the_real_layout(tmp_path: Path) -> None:
    shared = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
    if not shared.is_dir():
        pytest.skip("shared benchmark data not found")
    empty = tmp_path / "empty"
    empty.mkdir()
    good = EvalConfig("tiny", ["figstep_tiny"], tmp_path / "a", conditions=["figstep"], data_dir=str(shared))
    assert len(prepare(good)[1].items) == 50
    wrong = EvalConfig(
        "tiny", [f"figstep_tiny:images={empty}"], tmp_path / "b", conditions=["figstep"], data_dir=str(shared)
    )
    with pytest.raises(
        BenchmarkError, match=r"none of its 50 image\(s\) exist \(first: .*query_ForbidQI_1_1_6"
    ):
        prepare(wrong)


def test_a_non_unique_id_column_is_one_error_naming_the_id_and_lines(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("id,prompt\na,x\nb,y\na,z\nc,w\nc,v\na,u\n", encoding="utf-8")
    with pytest.raises(BenchmarkError) as exc:
        load_benchmark(f"text_csv:{path}").samples()
    assert _one_line(exc) == (
        f"{path}: id column 'id' is not unique: 'a' on lines 2, 4, 7 (and 1 more repeated id(s)); "
        "name a unique column with id="
    )
    other = tmp_path / "q.csv"
    other.write_text("key,prompt,group\nk1,x,g\nk2,y,g\n", encoding="utf-8")
    assert [s.id for s in load_benchmark(f"text_csv:{other},id=key").samples()] == ["k1", "k2"]
    with pytest.raises(BenchmarkError, match="id column 'group' is not unique: 'g' on lines 2, 3;"):
        load_benchmark(f"text_csv:{other},id=group").samples()


@pytest.mark.parametrize("bench", ["figstep_tiny", "mm_safetybench"])
def test_an_images_option_naming_no_folder_is_an_error_not_drawn_images(tmp_path: Path, bench: str) -> None:
    config = EvalConfig(
        "tiny", [f"{bench}:images={tmp_path / 'nope'}"], tmp_path / "run", conditions=["text"]
    )
    with pytest.raises(BenchmarkError) as exc:
        prepare(config)
    assert _one_line(exc).endswith(f"images={tmp_path / 'nope'} is not a folder")


def test_images_given_to_the_text_harmbench_names_harmbench_mm(tmp_path: Path) -> None:
    from safegap.errors import UserError

    with pytest.raises(UserError) as exc:
        load_benchmark(f"harmbench:images={tmp_path}")
    assert _one_line(exc) == (
        "benchmark harmbench: unknown option 'images'; it takes no options "
        "(harmbench_mm, HarmBench multimodal behaviours (behaviour + image), takes it)"
    )
    with pytest.raises(UserError, match=r"unknown option 'imgs'; valid: images \(did you mean 'images'\?\)$"):
        load_benchmark(f"harmbench_mm:imgs={tmp_path}")
