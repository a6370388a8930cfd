"""MM-SafetyBench (1,680 questions in 13 scenarios, three image kinds) in its published layout.

Files (``<data>/mm_safetybench/``): ``processed_questions/NN-Scenario.json`` (objects keyed by
question id with ``Question``, ``Key Phrase``, ``Rephrased Question``, ``Rephrased Question(SD)``),
``TinyVersion_ID_List.json`` for the tiny subset, and images (not bundled upstream)
``imgs/{scenario}/{SD|SD_TYPO|TYPO}/{id}.jpg``.

Conditions: ``sd`` (Stable Diffusion image + ``Rephrased Question(SD)``), ``sd_typo`` and ``typo``
(+ ``Rephrased Question``) and the generic ones (``text`` is the original ``Question``). Without
the ``imgs`` folder, ``typo`` images are drawn locally in the published layout (key phrase, large
font, 1024 px wide, greedy word wrap) and ``sd``/``sd_typo`` are unavailable (a clear error).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from safegap.data.benchmarks.base import (
    Benchmark,
    BenchmarkError,
    ImageLoadError,
    ImageRef,
    Request,
    Sample,
    SampleBuilder,
    read_json,
    register_benchmark,
)

KINDS = {"sd": "SD", "sd_typo": "SD_TYPO", "typo": "TYPO"}
FIELDS = ("Question", "Key Phrase", "Rephrased Question", "Rephrased Question(SD)")


def typo_image(phrase: str, width: int = 1024, font_size: int = 90) -> Image.Image:
    """The key phrase in MM-SafetyBench's TYPO layout: black on white, 1024 px wide, words
    wrapped greedily by pixel width, height ``font_size * (lines + 1)``, text from (0, 45)."""
    font = ImageFont.load_default(size=font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines: list[str] = []
    current = ""
    for word in phrase.split():
        trial = f"{current} {word}" if current else word
        if current and probe.textlength(trial, font=font) >= width:
            lines.append(current)
            current = " " + word
        else:
            current = trial
    lines.append(current)
    image = Image.new("RGB", (width, font_size * (len(lines) + 1)), (255, 255, 255))
    ImageDraw.Draw(image).multiline_text((0, font_size // 2), "\n".join(lines), fill=(0, 0, 0), font=font)
    return image


@register_benchmark
class MMSafetyBench(Benchmark):
    name = "mm_safetybench"
    option_keys = ("images",)
    description = "MM-SafetyBench, 1,680 questions x 3 image kinds in 13 scenarios"
    own_conditions = ("sd", "sd_typo", "typo")
    tiny = False

    def folder(self) -> Path:
        return self.data_path("mm_safetybench")

    def images_dir(self) -> Path:
        if "images" in self.options:
            return Path(self.options["images"]).expanduser()
        return self.folder() / "imgs"

    def default_conditions(self) -> tuple[str, ...]:
        if self.images_dir().is_dir():
            return ("sd", "sd_typo", "typo", "text")
        return ("typo", "text")

    def check_condition(self, condition: str) -> None:
        super().check_condition(condition)
        if condition in ("sd", "sd_typo") and not self.images_dir().is_dir():
            raise BenchmarkError(
                f"benchmark {self.id!r}: condition {condition!r} needs the MM-SafetyBench images under "
                f"{self.images_dir()} (not bundled; download them into imgs/<scenario>/{KINDS[condition]}/)"
            )

    def tiny_ids(self) -> dict[str, set[str]]:
        path = self.folder() / "TinyVersion_ID_List.json"
        data = read_json(path)
        if not isinstance(data, list):
            raise BenchmarkError(f"{path}: expected a list of {{Scenario, Sampled_ID_List}}")
        out: dict[str, set[str]] = {}
        for i, entry in enumerate(data):
            if not isinstance(entry, dict) or "Scenario" not in entry or "Sampled_ID_List" not in entry:
                raise BenchmarkError(f"{path} entry {i}: needs 'Scenario' and 'Sampled_ID_List'")
            out[str(entry["Scenario"])] = {str(x) for x in entry["Sampled_ID_List"]}
        return out

    def load(self) -> list[Sample]:
        questions = self.folder() / "processed_questions"
        files = sorted(questions.glob("*.json")) if questions.is_dir() else []
        if not files:
            raise BenchmarkError(f"benchmark file not found: {questions}/*.json")
        keep = self.tiny_ids() if self.tiny else None
        out = SampleBuilder()
        for path in files:
            scenario = path.stem
            data = read_json(path)
            if not isinstance(data, dict):
                raise BenchmarkError(f"{path}: expected an object keyed by question id")
            wanted = keep.get(scenario, set()) if keep is not None else None
            for qid in sorted(data, key=lambda k: (len(k), k)):
                if wanted is not None and qid not in wanted:
                    continue
                sample_id = f"{scenario.split('-')[0]}_{qid}"
                entry = data[qid]
                where = f"{path} entry {qid!r}"
                if not isinstance(entry, dict):
                    out.bad(sample_id, scenario, f"{where}: expected an object")
                    continue
                missing = [f for f in FIELDS if not str(entry.get(f) or "").strip()]
                if missing:
                    out.bad(sample_id, scenario, f"{where}: missing or empty {', '.join(missing)}")
                    continue
                fields = {f: str(entry[f]).strip() for f in FIELDS}
                fields.update(scenario=scenario, qid=qid)
                out.add(Sample(sample_id, scenario, fields["Question"], True, fields), where)
        return out.samples

    def own_request(self, sample: Sample, condition: str) -> Request:
        kind = KINDS[condition]
        prompt = sample.fields["Rephrased Question(SD)" if condition == "sd" else "Rephrased Question"]
        folder = self.images_dir()
        if folder.is_dir():
            path = folder / sample.fields["scenario"] / kind / f"{sample.fields['qid']}.jpg"
            return Request(prompt, ImageRef("file", str(path)))
        if condition == "typo":
            return Request(prompt, ImageRef("render", "typo"))
        raise BenchmarkError(f"benchmark {self.id!r}: no images for condition {condition!r}")

    def render(self, layout: str, sample: Sample) -> Image.Image:
        if layout != "typo":
            raise ImageLoadError(f"{self.id}: cannot render {layout!r} images")
        return typo_image(sample.fields["Key Phrase"])


@register_benchmark
class MMSafetyBenchTiny(MMSafetyBench):
    name = "mm_safetybench_tiny"
    description = "MM-SafetyBench tiny subset (168 questions from TinyVersion_ID_List.json)"
    tiny = True
