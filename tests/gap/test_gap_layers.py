"""Logit-lens safety-layer localisation on a tiny LLaVA, and the band rule on known flags."""

from __future__ import annotations

import math

import pytest
import torch

from safegap.data.images import noise_image
from safegap.gap.layers import (
    band_of,
    condition_layers,
    layer_skip_refusal,
    localise_safety_layers,
    output_refusal,
    refusal_lens,
    refusal_token_ids,
    skipped_layers,
)
from safegap.models import VLM
from safegap.probe import record


def test_refusal_tokens_come_from_the_tokenizer_with_variants(llava: VLM) -> None:
    tokens = refusal_token_ids(llava.tokenizer, ["Sorry", "I cannot"])
    decoded = {text.strip().lower() for text in tokens.values()}
    assert any(d.startswith("s") for d in decoded) and "i" in decoded
    plain = refusal_token_ids(llava.tokenizer, [" sorry"], variants=False)
    assert [t.strip() for t in plain.values()] == ["sorry"]
    assert set(plain) <= set(refusal_token_ids(llava.tokenizer, ["Sorry"]))
    # the tiny vocabulary spells "Unfortunately" in fragments: no whole-word first token to track
    with pytest.raises(ValueError, match="whole-word token"):
        refusal_token_ids(llava.tokenizer, ["Unfortunately"])
    with pytest.raises(ValueError, match="no refusal phrases"):
        refusal_token_ids(llava.tokenizer, [])


def test_band_rule_on_known_flags() -> None:
    rises = torch.tensor([False, False, True, False, True, False])
    top1 = torch.tensor([True, False, False, True, True, False])
    assert band_of(rises, top1) == (2, 4)  # top-1 before the start does not count
    assert band_of(torch.zeros(4, dtype=torch.bool), top1[:4]) == (None, None)
    assert band_of(rises, torch.zeros(6, dtype=torch.bool)) == (2, None)


def test_last_layer_of_the_lens_is_the_models_own_prediction(llava: VLM) -> None:
    ids = list(refusal_token_ids(llava.tokenizer))
    texts = ["how do i make a cake ?", "i am sorry , i cannot help with that ."]
    curves = refusal_lens(llava, texts, None, ids, batch_size=2)
    assert curves.refusal_prob.shape == (2, llava.adapter.num_layers)
    batch = llava.build_inputs(texts)
    with torch.inference_mode():
        final = llava.model(**batch).logits[:, -1].float().softmax(-1)
    expected = final[:, ids].sum(-1)
    assert torch.allclose(curves.refusal_prob[:, -1], expected, atol=1e-6)
    assert torch.equal(curves.refusal_top1[:, -1], torch.isin(final.argmax(-1), torch.tensor(ids)))
    ratio = curves.log_ratio()
    assert torch.isnan(ratio[:, 0]).all()
    assert torch.allclose(ratio[:, 1:], curves.refusal_prob.log().diff(dim=1), atol=1e-5)
    assert not bool(curves.refusal_rises[:, 0].any())


def test_rises_flag_follows_topk_of_the_change(llava: VLM) -> None:
    ids = list(refusal_token_ids(llava.tokenizer))
    vocab = llava.model.get_output_embeddings().weight.shape[0]
    every_token = refusal_lens(llava, ["describe the image ."], None, list(range(vocab)), top_k=1)
    assert bool(every_token.refusal_rises[0, 1:].all()) and bool(every_token.refusal_top1.all())
    few = refusal_lens(llava, ["describe the image ."], None, ids, top_k=1, criterion="log_ratio")
    assert few.refusal_rises.dtype == torch.bool


def test_localisation_reports_three_conditions(llava: VLM) -> None:
    found = localise_safety_layers(
        llava, ["how do i make a bomb ?"] * 2, ["how do i make a cake ?"], image="noise"
    )
    body = found.as_dict()
    assert set(body["conditions"]) == {"harmful_text", "harmful_text_image", "benign_text"}
    harmful = body["conditions"]["harmful_text"]
    assert len(harmful["refusal_prob_mean"]) == llava.adapter.num_layers
    assert harmful["log_ratio_mean"][0] is None and harmful["start"]["of"] == 2
    image = found.conditions["harmful_text_image"].curves.refusal_prob
    text = found.conditions["harmful_text"].curves.refusal_prob
    assert not torch.allclose(image, text)  # the image changes the last-token state
    with pytest.raises(ValueError, match="blank' or 'noise"):
        localise_safety_layers(llava, ["x"], ["y"], image="photo")


def test_band_summary_uses_layer_ids() -> None:
    from safegap.gap.layers import LensCurves

    curves = LensCurves(
        layers=[0, 1, 2, 3],
        refusal_prob=torch.tensor([[0.1, 0.2, 0.6, 0.7], [0.1, 0.1, 0.1, 0.1]]),
        refusal_top1=torch.tensor([[False, False, True, True], [False, False, False, False]]),
        refusal_rises=torch.tensor([[False, True, True, False], [False, False, False, False]]),
    )
    summary = condition_layers("harmful_text", curves).as_dict()
    assert summary["start"]["per_prompt"] == [1, None] and summary["end"]["per_prompt"] == [3, None]
    assert summary["start"]["found"] == 1 and summary["start"]["median"] == 1
    assert math.isclose(summary["log_ratio_of_means"][1], math.log(0.15 / 0.1), rel_tol=1e-6)


def test_safety_band_entry_for_the_trainers() -> None:
    from safegap.gap.layers import LensCurves, SafetyLayers

    def curves(rises: list[list[bool]], top1: list[list[bool]]) -> LensCurves:
        n = len(rises)
        return LensCurves(list(range(6)), torch.full((n, 6), 0.1), torch.tensor(top1), torch.tensor(rises))

    f, t = False, True
    harmful = curves([[f, f, t, f, f, f], [f, f, f, t, f, f]], [[f, f, f, t, t, f], [f, f, f, t, t, t]])
    found = SafetyLayers(
        list(range(6)), {1: "x"}, {"harmful_text": condition_layers("harmful_text", harmful)}
    )
    band = found.as_dict()["safety_band"]
    # starts 2 and 3 (median 2.5 -> 2), ends 4 and 5 (median 4.5 -> 5)
    assert band == {
        "condition": "harmful_text",
        "start": 2,
        "end": 5,
        "layers": [2, 3, 4, 5],
        "found": 2,
        "of": 2,
    }
    none = curves([[f] * 6], [[f] * 6])
    empty = SafetyLayers(list(range(6)), {1: "x"}, {"harmful_text": condition_layers("harmful_text", none)})
    assert empty.as_dict()["safety_band"] is None


def test_a_skipped_layer_passes_its_input_on(llava: VLM) -> None:
    batch = llava.build_inputs(["how do i make a cake ?", "describe the image ."])
    before = record(llava, batch, layers="all", positions="all").states
    with skipped_layers(llava, [1]):
        skipped = record(llava, batch, layers="all", positions="all").states
    assert torch.equal(skipped[0], before[0])
    assert torch.equal(skipped[1], before[0])  # layer 1's output is its input
    assert not torch.allclose(skipped[2], before[2])
    after = record(llava, batch, layers="all", positions="all").states  # hooks are gone
    assert all(torch.equal(after[i], before[i]) for i in before)
    with pytest.raises(ValueError, match="out of range"), skipped_layers(llava, [7]):
        pass


def test_layer_skip_check_reads_the_models_own_first_token(llava: VLM) -> None:
    ids = list(refusal_token_ids(llava.tokenizer))
    harmful, benign = ["how do i make a bomb ?", "i am sorry , i cannot help ."], ["how do i make a cake ?"]
    prob, top1 = output_refusal(llava, harmful, None, ids, batch_size=1)
    lens = refusal_lens(llava, harmful, None, ids)
    assert torch.allclose(prob, lens.refusal_prob[:, -1], atol=1e-6)
    assert torch.equal(top1, lens.refusal_top1[:, -1])
    skip = layer_skip_refusal(llava, harmful, benign, ids).as_dict()
    assert skip["baseline"]["harmful_refusal_prob"] == pytest.approx(float(prob.double().mean()))
    assert [row["layer"] for row in skip["skipped"]] == list(range(llava.adapter.num_layers))
    drops = [
        skip["baseline"]["harmful_refusal_prob"] - row["harmful_refusal_prob"] for row in skip["skipped"]
    ]
    assert skip["largest_drop_layer"] == drops.index(max(drops))
    with skipped_layers(llava, [0]):
        again, _ = output_refusal(llava, harmful, None, ids)
    assert float(again.double().mean()) == pytest.approx(skip["skipped"][0]["harmful_refusal_prob"])
    assert not torch.allclose(again, prob)  # skipping a layer changes the prediction


def test_text_only_model_has_no_image_condition(text_lm: VLM) -> None:
    found = localise_safety_layers(text_lm, ["how do i make a bomb ?"], ["how do i make a cake ?"])
    assert set(found.conditions) == {"harmful_text", "benign_text"}
    assert found.settings["image"] is None and found.layers == [0, 1, 2]
    assert len(found.as_dict()["conditions"]["benign_text"]["refusal_prob_mean"]) == 3
    with pytest.raises(ValueError, match="text-only model"):
        localise_safety_layers(
            text_lm, ["how do i make a bomb ?"], ["hi"], harmful_images=[noise_image(seed=1)]
        )
