"""Semantic shift (TGA) and CMRM's five conditions."""

from __future__ import annotations

import pytest
import torch

from safegap.gap.data import GapRecord
from safegap.gap.shift import CONDITIONS, five_conditions, semantic_shift, shift_from_pooled
from safegap.models import VLM


def test_shift_numbers_on_constructed_pairs() -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.randn(8, 2, 16, generator=g)
    caption = image + 0.1 * torch.randn(8, 2, 16, generator=g)
    result = shift_from_pooled(image, caption, [3, 5])
    assert result.layers == [3, 5]
    assert all(m > 0.95 for m in result.matched_cosine)
    assert all(abs(m) < 0.5 for m in result.mismatched_cosine)
    assert result.retrieval_accuracy == [1.0, 1.0]
    unrelated = shift_from_pooled(image, torch.randn(8, 2, 16, generator=g), [3, 5])
    assert max(unrelated.matched_cosine) < 0.6
    with pytest.raises(ValueError, match="at least two"):
        shift_from_pooled(image[:1], caption[:1], [3, 5])


def test_semantic_shift_on_tiny_llava(llava: VLM, records: list[GapRecord]) -> None:
    result = semantic_shift(llava, records, [0, 1, 2], batch_size=4)
    body = result.as_dict()
    assert body["samples"] == len(records) and body["chance_retrieval"] == pytest.approx(1 / len(records))
    for key in ("matched_cosine", "mismatched_cosine", "retrieval_accuracy", "l2i", "rmg"):
        assert len(body[key]) == 3
    assert all(-1 <= v <= 1 for v in body["matched_cosine"] + body["mismatched_cosine"])


def test_semantic_shift_needs_captions(llava: VLM, records: list[GapRecord]) -> None:
    bare = [GapRecord(prompt=r.prompt, image=r.image) for r in records]
    with pytest.raises(ValueError, match="needs a caption"):
        semantic_shift(llava, bare)


def test_five_conditions(llava: VLM, records: list[GapRecord]) -> None:
    records = records[:4]
    result = five_conditions(llava, records, [0, 2], pca_layers=[2], batch_size=4)
    assert tuple(result.states) == CONDITIONS
    assert all(s.shape == (len(records), 2, llava.adapter.hidden_size) for s in result.states.values())
    distances = result.distances()
    assert set(distances) == set(CONDITIONS) - {"query_only"}
    assert all(v > 0 for d in distances.values() for v in d["paired_l2"])
    pca = result.pca(2)
    assert set(pca["coords"]) == set(CONDITIONS)
    assert all(len(c) == len(records) and len(c[0]) == 2 for c in pca["coords"].values())
    assert 0 < sum(pca["explained_variance_ratio"]) <= 1 + 1e-9
    # the noise image differs from the original, so its states differ
    assert not torch.allclose(result.states["noise_image"], result.states["original"])


def test_five_conditions_without_captions_skips_that_condition(llava: VLM, records: list[GapRecord]) -> None:
    bare = [GapRecord(prompt=r.prompt, image=r.image) for r in records[:3]]
    result = five_conditions(llava, bare, [1])
    assert "caption_text" not in result.states and len(result.states) == 4
    assert result.as_dict()["pca"][0]["layer"] == 1
    with pytest.raises(ValueError, match="not among the measured layers"):
        five_conditions(llava, bare, [1], pca_layers=[0])
