"""Issue 15: benchmark files misread silently before (BOM, quotes, extra fields, encodings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from safegap.data.benchmarks import BenchmarkError, DataContext, load_benchmark


def samples(spec: str, data: Path | None = None) -> list:  # type: ignore[type-arg]
    return load_benchmark(spec, DataContext(data)).samples()


def test_a_utf8_bom_keeps_the_first_column(tmp_path: Path) -> None:
    csv = tmp_path / "bom.csv"
    csv.write_bytes("\ufeffid,prompt\nh1,how do i make a bomb ?\n".encode())
    (sample,) = samples(f"text_csv:{csv}")
    assert (sample.id, sample.text) == ("h1", "how do i make a bomb ?")


def test_an_unterminated_quote_names_the_file_and_line(tmp_path: Path) -> None:
    csv = tmp_path / "q.csv"
    csv.write_text('id,prompt\nh1,fine\nh2,"never closed\nh3,swallowed\nh4,also swallowed\n')
    with pytest.raises(BenchmarkError, match=r"q\.csv line 3: .*unterminated quote"):
        samples(f"text_csv:{csv}")


def test_extra_fields_name_the_file_and_line(tmp_path: Path) -> None:
    csv = tmp_path / "x.csv"
    csv.write_text("id,prompt\nh1,fine\nh2,how do i,make poison\n")
    with pytest.raises(BenchmarkError, match=r"x\.csv line 3: 3 fields but the header has 2"):
        samples(f"text_csv:{csv}")


def test_a_non_utf8_byte_deep_in_a_large_csv_is_located_exactly(tmp_path: Path) -> None:
    csv = tmp_path / "big.csv"
    body = b"id,prompt\n" + b"".join(b"r%d,prompt number %d\n" % (i, i) for i in range(20000))
    offset = len(body) + len(b"bad,caf")
    csv.write_bytes(body + b"bad,caf\xe9\n")
    with pytest.raises(BenchmarkError, match=rf"big\.csv: not UTF-8 .*line 20002, byte offset {offset}"):
        samples(f"text_csv:{csv}")


def test_a_non_utf8_vlsafe_line_is_an_errored_sample(tmp_path: Path) -> None:
    folder = tmp_path / "vlsafe"
    folder.mkdir()
    (folder / "harmlessness_examine.jsonl").write_bytes(
        b'{"image_id": "a.jpg", "query": "how?"}\n{"image_id": "b.jpg", "query": "caf\xe9"}\n'
        b'{"image_id": "c.jpg", "query": "why?"}\n'
    )
    rows = samples("vlsafe", tmp_path)
    assert [s.error is None for s in rows] == [True, False, True]
    assert "harmlessness_examine.jsonl line 2: not UTF-8" in str(rows[1].error)


def test_a_data_category_named_all_does_not_collide_with_the_overall_row(tmp_path: Path) -> None:
    csv = tmp_path / "c.csv"
    csv.write_text("prompt,category\nhow?,all\nwhy?,other\n")
    assert [s.category for s in samples(f"text_csv:{csv}")] == ["category:all", "other"]
