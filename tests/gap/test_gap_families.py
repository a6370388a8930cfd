"""The model-facing diagnostics on every family's tiny random model (plumbing, not values)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from safegap.data.images import noise_image
from safegap.gap.collect import image_text_spans, measure_gap
from safegap.gap.data import GapRecord
from safegap.gap.layers import refusal_lens, refusal_token_ids
from safegap.gap.shift import semantic_shift
from safegap.models import load_vlm
from safegap.testing import FAMILIES as TINY_FAMILIES
from safegap.testing import build_tiny


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_gap_shift_and_lens_run_on_every_family(family: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    vlm = load_vlm(build_tiny(family, tmp_path / family))
    records = [
        GapRecord(prompt=p, image=noise_image((48, 40), seed=i), caption="a red circle")
        for i, p in enumerate(["describe the image .", "what is shown here ?", "tell me about the picture ."])
    ]
    batch = vlm.build_inputs([records[0].prompt], [records[0].load_image()])
    image, text = image_text_spans()(vlm, batch, [0])
    assert int(image.sum()) >= 1 and int(text.sum()) >= 1
    assert "cribe" in "".join(vlm.tokenizer.convert_ids_to_tokens(batch["input_ids"][0][text[0]].tolist()))
    result = measure_gap(vlm, records, batch_size=2, probe_layer=None)
    assert math.isfinite(result.mir) and len(result.layers) == vlm.adapter.num_layers
    shift = semantic_shift(vlm, records, batch_size=2)
    assert len(shift.matched_cosine) == vlm.adapter.num_layers
    ids = list(refusal_token_ids(vlm.tokenizer, ["sorry", "I cannot"]))
    curves = refusal_lens(vlm, ["how do i make a cake ?"], None, ids)
    assert curves.refusal_prob.shape == (1, vlm.adapter.num_layers)
