"""Fluency measures: perplexity under the model's own LM (text-only), distinct-n, repetition."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from safegap.eval.fluency import (
    TokenNLL,
    corpus_perplexity,
    distinct_n,
    fluency_summary,
    generation_nll,
    mean_repetition,
    perplexities,
    repetition_rate,
)
from safegap.models import VLM

TEXTS = ["the cat sat on the mat", "hello there, friend", "a b c d e f g"]


def _manual_nll(vlm: VLM, context: list[int], text: str) -> tuple[float, int]:
    """The continuation's summed NLL from one unpadded forward pass, written out by hand."""
    cont = vlm.tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([context + cont])
    with torch.no_grad():
        logits = vlm.model(input_ids=ids).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    total = sum(-float(logp[p - 1, ids[0, p]]) for p in range(max(len(context), 1), ids.shape[1]))
    return total, ids.shape[1] - max(len(context), 1)


def test_perplexity_matches_a_hand_computation_and_ignores_batching(
    tiny_vlm: Callable[[str], VLM], one_thread: None
) -> None:
    vlm = tiny_vlm("llava")
    prompts = ["What is on the mat?", "Say hi.", "List letters."]
    batched = generation_nll(vlm, TEXTS, prompts, batch_size=3)
    single = generation_nll(vlm, TEXTS, prompts, batch_size=1)
    for b, s, prompt, text in zip(batched, single, prompts, TEXTS, strict=True):
        assert b.tokens == s.tokens > 0
        assert b.nll == pytest.approx(s.nll, rel=1e-4), "right padding must not change a row's score"
        nll, tokens = _manual_nll(vlm, vlm.adapter.text_only_ids(prompt), text)
        assert (b.nll, b.tokens) == (pytest.approx(nll, rel=1e-4), tokens)
    ppl = perplexities(vlm, TEXTS, prompts)
    assert ppl[0] == pytest.approx(math.exp(batched[0].nll / batched[0].tokens))
    # Without prompts the generation is scored from BOS (or from its second token).
    bare = generation_nll(vlm, TEXTS[:1])[0]
    bos = vlm.tokenizer.bos_token_id
    nll, tokens = _manual_nll(vlm, [bos] if bos is not None else [], TEXTS[0])
    assert (bare.nll, bare.tokens) == (pytest.approx(nll, rel=1e-4), tokens)
    assert bare.nll != pytest.approx(batched[0].nll), "the prompt conditions the score"


def test_empty_generation_has_no_perplexity(tiny_vlm: Callable[[str], VLM], one_thread: None) -> None:
    vlm = tiny_vlm("llava")
    assert perplexities(vlm, ["", "fine words"], ["q", "q"])[0] is None
    with pytest.raises(ValueError, match="1 prompts for 2 generations"):
        generation_nll(vlm, ["a", "b"], ["q"])


def test_perplexity_of_a_text_only_causal_lm(tmp_path: Path, one_thread: None) -> None:
    from safegap.models.loading import load_vlm
    from safegap.testing import build_tiny_causal_lm

    lm = load_vlm(build_tiny_causal_lm(tmp_path / "lm"))
    (result,) = generation_nll(lm, ["some generated words"], ["a request"])
    nll, tokens = _manual_nll(lm, lm.adapter.text_only_ids("a request"), "some generated words")
    assert result.tokens == tokens and result.nll == pytest.approx(nll, rel=1e-4)


def test_corpus_perplexity_weights_by_tokens() -> None:
    rows = [TokenNLL(2.0, 1), TokenNLL(6.0, 3), TokenNLL(0.0, 0)]
    assert corpus_perplexity(rows) == pytest.approx(math.exp(8.0 / 4))
    assert corpus_perplexity([TokenNLL(0.0, 0)]) is None


def test_distinct_n_and_repetition_by_hand() -> None:
    assert distinct_n(["a b a b", "a c"], 1) == pytest.approx(3 / 6)  # unique a b c of 6 words
    assert distinct_n(["a b a b", "a c"], 2) == pytest.approx(3 / 4)  # ab ba ab ac -> 3 unique
    assert distinct_n(["one"], 2) is None
    assert repetition_rate("the cat the cat the cat", 2) == pytest.approx(1 - 2 / 5)  # "the cat", "cat the"
    assert repetition_rate("all different words here", 1) == 0.0
    assert repetition_rate("too short", 4) is None
    assert mean_repetition(["x y x y", "short", "p q r s"], 2) == pytest.approx(((1 - 2 / 3) + 0.0) / 2)
    summary = fluency_summary(["I am fine. I am fine. I am fine. I am fine."])
    assert summary["distinct_1"] == pytest.approx(3 / 12)
    assert summary["repetition_4"] == pytest.approx(1 - 3 / 9)
