"""Wrapper defenses (system prompt, ECSO) and composition with '+'."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from safegap.data.images import blank_image
from safegap.eval.defenses import NoDefense
from safegap.eval.wrappers import (
    DEFAULT_SAFETY_PROMPT,
    ECSODefense,
    SystemPromptDefense,
    build_defense,
    configure_generation,
    defense_chain,
    defense_details,
    ecso_says_unsafe,
    split_composite,
)
from safegap.models import VLM


@dataclass
class Scripted:
    """Replies from a queue of scripts; records every call."""

    scripts: list[list[str]]
    id: str = "scripted"
    calls: list[dict[str, Any]] = field(default_factory=list)

    def generate(
        self, vlm: Any, texts: Sequence[str], images: Any, max_new_tokens: int, system: str | None = None
    ) -> list[str]:
        self.calls.append(
            {"texts": list(texts), "images": images, "max_new_tokens": max_new_tokens, "system": system}
        )
        replies = self.scripts.pop(0)
        assert len(replies) == len(texts)
        return replies


def test_system_prompt_reaches_the_inner_defense() -> None:
    inner = Scripted([["ok"]])
    SystemPromptDefense("Be safe.", inner).generate(None, ["hi"], None, 5, system="Caller system.")  # type: ignore[arg-type]
    assert inner.calls[0]["system"] == "Caller system.\n\nBe safe."


def test_system_prompt_changes_the_rendered_prompt(tiny_llava: VLM, tmp_path: Path) -> None:
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("From a file, with, commas.\n")
    defense = build_defense(f"system_prompt:{prompt_file}", tiny_llava)
    assert isinstance(defense, SystemPromptDefense) and defense.prompt == "From a file, with, commas."
    text = build_defense("system_prompt:Be careful, always.", tiny_llava)
    assert text.prompt == "Be careful, always." and text.id == "system_prompt:Be careful, always."  # type: ignore[attr-defined]
    assert build_defense("system_prompt", tiny_llava).prompt == DEFAULT_SAFETY_PROMPT  # type: ignore[attr-defined]
    rendered = tiny_llava.adapter.render("hi", False, DEFAULT_SAFETY_PROMPT)
    assert rendered.startswith(DEFAULT_SAFETY_PROMPT)
    assert len(text.generate(tiny_llava, ["how do i make a cake ?"], None, 4)) == 1
    long_text = "Refuse anything dangerous. " * 20  # longer than a file name may be: text, not a path
    assert build_defense(f"system_prompt:{long_text}", tiny_llava).prompt == long_text.strip()  # type: ignore[attr-defined]


def test_ecso_steps() -> None:
    img = blank_image()
    inner = Scripted(
        [
            ["Sure, step 1", "Sure, step 2", "text answer"],  # 1. answers
            ["Yes, it is harmful.", "No."],  # 2. self-check of the two image rows
            ["a picture of a red circle"],  # 3. query-aware caption of the flagged row
            ["I am sorry, I cannot help."],  # 4. answer from the caption, no image
        ]
    )
    ecso = ECSODefense(inner, check_tokens=3, caption_tokens=7)
    out = ecso.generate(None, ["q1", "q2", "q3"], [img, img, None], 20)  # type: ignore[arg-type]
    assert out == ["I am sorry, I cannot help.", "Sure, step 2", "text answer"]
    check, caption, answer = inner.calls[1:]
    assert check["images"] is None and check["max_new_tokens"] == 3 and "Sure, step 1" in check["texts"][0]
    assert caption["images"] == [img] and caption["max_new_tokens"] == 7 and "q1" in caption["texts"][0]
    assert answer["images"] is None and "a picture of a red circle" in answer["texts"][0]
    assert "q1" in answer["texts"][0]
    details = defense_details(ecso)
    assert details is not None and details[0]["ecso_unsafe"] and not details[1]["ecso_unsafe"]
    assert details[2] == {"ecso_checked": False}


def test_ecso_self_check_parsing() -> None:
    assert ecso_says_unsafe("Yes.") and ecso_says_unsafe("The response is harmful")
    assert not ecso_says_unsafe("No, it is fine") and not ecso_says_unsafe("it is not harmful")


def test_composition_nests_left_to_right(tiny_llava: VLM, tmp_path: Path) -> None:
    from safegap.steer import calibrate

    shift = calibrate(
        tiny_llava, [("how do i make a cake ?", None), ("describe the image", None)], batch_size=2
    )
    path = shift.save(tmp_path / "shift.safetensors")
    spec = f"system_prompt+ecso+cmrm:{path},alpha=0.5"
    assert split_composite(spec) == ["system_prompt", "ecso", f"cmrm:{path},alpha=0.5"]
    defense = build_defense(spec, tiny_llava)
    chain = defense_chain(defense)
    assert [type(d).__name__ for d in chain] == ["SystemPromptDefense", "ECSODefense", "CMRMDefense"]
    assert defense.id == spec
    configure_generation(defense, 3, {})
    assert chain[2].batch_size == 3  # type: ignore[attr-defined]
    layers = tiny_llava.adapter.decoder_layers
    before = [len(layer._forward_hooks) + len(layer._forward_pre_hooks) for layer in layers]
    replies = defense.generate(tiny_llava, ["how do i make a cake ?", "hi"], [blank_image(), None], 4)
    assert len(replies) == 2
    after = [len(layer._forward_hooks) + len(layer._forward_pre_hooks) for layer in layers]
    assert after == before, "CMRM hooks are removed after generating"
    with pytest.raises(ValueError, match="does not support sampling"):
        configure_generation(build_defense(f"cmrm:{path}", tiny_llava), 2, {"do_sample": True})


def test_shift_vector_for_another_model_is_a_clear_error(tiny_llava: VLM, tmp_path: Path) -> None:
    from safegap.steer import ShiftVector

    path = ShiftVector({0: torch.zeros(7)}).save(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="does not fit the model"):
        build_defense(f"cmrm:{path}", tiny_llava)


def test_bad_compositions(tiny_llava: VLM, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'none' takes no arguments"):
        build_defense("none:x", tiny_llava)
    with pytest.raises(ValueError, match="cannot wrap another defense"):
        build_defense("none+system_prompt", tiny_llava)
    with pytest.raises(ValueError, match="unknown defense 'nope' in 'system_prompt\\+nope'"):
        build_defense("system_prompt+nope", tiny_llava)


def test_sampling_options_reach_plain_generation(tiny_llava: VLM) -> None:
    defense = build_defense("system_prompt", tiny_llava)
    configure_generation(defense, 2, {"do_sample": True, "temperature": 1.5, "top_p": 1.0})
    inner = defense_chain(defense)[-1]
    assert isinstance(inner, NoDefense) and inner.generation_kwargs["temperature"] == 1.5
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        outs.append(defense.generate(tiny_llava, ["how do i make a cake ?"] * 2, None, 6))
    assert outs[0] == outs[1], "seeded sampling is reproducible"
