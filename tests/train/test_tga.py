"""TGA on the tiny LLaVA: value against an independent computation, gradients, padding, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from safegap.models import VLM
from safegap.probe import record
from safegap.train.config import TrainConfig
from safegap.train.data import ConversationEncoder, read_conversations
from safegap.train.hooks import LossContext, capture_hidden_states
from safegap.train.setup import configure_trainable, find_projector
from safegap.train.tga import TGALoss, caption_batch, encode_caption

LAYERS = (1, 2)


def multimodal_ctx(vlm: VLM, model: Any, dataset: Path, rows: slice, retrieved: bool = True) -> LossContext:
    encoder = ConversationEncoder(vlm.adapter, with_captions=True)
    examples = read_conversations(dataset)[rows]
    if not retrieved:
        examples = [type(e)(**{**e.__dict__, "retrieved_text": None}) for e in examples]
    batch = encoder.collate([encoder.encode(e) for e in examples])
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "pixel_values")}
    with capture_hidden_states(vlm.adapter.decoder_layers) as cap:
        model(**inputs, use_cache=False)
    return LossContext.from_capture(model, batch, cap, vlm.adapter, step=0, lm_loss=torch.zeros(()))


def test_caption_mask_covers_the_caption_only(vlm: VLM) -> None:
    ids, mask = encode_caption(vlm.adapter, "a red circle on a white table")
    caption_text = vlm.tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
    assert caption_text.strip() == "a red circle on a white table"
    assert not all(mask)  # the chat template's tokens are excluded
    plain_ids, plain_mask = encode_caption(vlm.adapter, "a red circle", template="plain")
    assert all(plain_mask) and len(plain_ids) < len(ids)


def test_value_matches_an_independent_computation(vlm: VLM, dataset: Path) -> None:
    ctx = multimodal_ctx(vlm, vlm.model, dataset, slice(0, 4), retrieved=False)
    value = TGALoss(layers=LAYERS, weight=2.0)(ctx)
    captions = [
        f"{a} on a white table"
        for a in ("a red circle", "a blue square", "the quick brown fox", "a cat on a table")
    ]
    caption = caption_batch(vlm.adapter, captions)
    rec = record(
        vlm,
        {"input_ids": caption["caption_input_ids"], "attention_mask": caption["caption_attention_mask"]},
        layers=list(LAYERS),
        positions=caption["caption_token_mask"],
    )
    expected = 0.0
    for layer in LAYERS:
        c = torch.stack([rec.states[layer][rec.row_index == r].mean(0) for r in range(4)])
        h = ctx.hidden_states[layer].detach()
        i = torch.stack([h[r][ctx.image_mask[r]].mean(0) for r in range(4)])
        expected -= float(F.cosine_similarity(i, c, dim=-1).mean())
    assert float(value.detach()) == pytest.approx(expected, rel=1e-4)  # unweighted; the loop applies 2.0
    assert ctx.extras["tga/rows"] == 4.0
    assert ctx.extras["tga/cos_ic"] == pytest.approx(-expected / len(LAYERS), rel=1e-4)
    assert "tga/cos_rc" not in ctx.extras


def test_ranking_term_adds_softplus_for_rows_with_retrieved_text(vlm: VLM, dataset: Path) -> None:
    with_r = multimodal_ctx(vlm, vlm.model, dataset, slice(0, 4), retrieved=True)
    assert "retrieved_mask" in with_r.batch
    assert with_r.batch["retrieved_mask"].any(dim=1).tolist() == [False, True, False, True]
    value = float(TGALoss(layers=(1,))(with_r).detach())
    cos_ic = with_r.extras["tga/cos_ic"]
    cos_rc = with_r.extras["tga/cos_rc"]
    assert -1.0 <= cos_rc <= 1.0
    pull_only = -cos_ic
    assert value > pull_only  # softplus > 0 for the two ranked rows
    assert value < pull_only + 2 * F.softplus(torch.tensor(2.0)).item() / 4 + 1e-6


def test_gradient_reaches_only_the_projector_in_projector_stage(vlm: VLM, dataset: Path) -> None:
    model = configure_trainable(
        vlm.model, vlm.adapter, TrainConfig(model="", data="", out="", stage="projector")
    )
    ctx = multimodal_ctx(vlm, model, dataset, slice(0, 4))
    TGALoss(layers=LAYERS)(ctx).backward()
    projector, _ = find_projector(model)
    for name, param in model.named_parameters():
        if name.startswith(projector + "."):
            assert param.grad is not None and float(param.grad.abs().sum()) > 0, name
        else:
            assert param.grad is None, name


def test_caption_targets_carry_no_gradient_and_ignore_padding(vlm: VLM, dataset: Path) -> None:
    ctx = multimodal_ctx(vlm, vlm.model, dataset, slice(0, 2))
    term = TGALoss(layers=LAYERS)
    rows = torch.tensor([0, 1])
    together = term.caption_states(ctx, rows)
    assert all(not t.requires_grad for t in together.values())
    # Row 0 alone (no padding) must give the same caption means as inside the padded batch.
    short = caption_batch(vlm.adapter, ["a red circle", "a blue square on a white table with a cat"])
    alone = caption_batch(vlm.adapter, ["a red circle"])
    ctx_pad = LossContext(**{**ctx.__dict__, "batch": {**ctx.batch, **short}})
    ctx_alone = LossContext(**{**ctx.__dict__, "batch": {**ctx.batch, **alone}})
    padded = term.caption_states(ctx_pad, rows)
    single = term.caption_states(ctx_alone, torch.tensor([0]))
    assert short["caption_attention_mask"][0].sum() < short["caption_attention_mask"].shape[1]
    for layer in LAYERS:
        torch.testing.assert_close(padded[layer][0], single[layer][0], rtol=1e-5, atol=1e-6)


def test_caption_pass_keeps_train_mode_and_stops_early(vlm: VLM, dataset: Path) -> None:
    ctx = multimodal_ctx(vlm, vlm.model, dataset, slice(0, 2))
    vlm.model.train()
    calls: list[int] = []
    last = vlm.adapter.decoder_layers[-1]
    handle = last.register_forward_hook(lambda *_: calls.append(1))
    try:
        TGALoss(layers=(0,)).caption_states(ctx, torch.tensor([0, 1]))
    finally:
        handle.remove()
    assert calls == []  # the caption pass stopped after layer 0
    assert all(m.training for m in vlm.model.modules())


def test_missing_captions_and_decay(vlm: VLM, dataset: Path) -> None:
    ctx = multimodal_ctx(vlm, vlm.model, dataset, slice(0, 2))
    bare = LossContext(**{**ctx.__dict__, "batch": {"input_ids": ctx.batch["input_ids"]}})
    with pytest.raises(ValueError, match="caption_input_ids"):
        TGALoss(layers=(1,))(bare)
    decayed = TGALoss(layers=(1,), weight=2.0, decay="linear", total_steps=10)
    assert [decayed.current_weight(s) for s in (0, 5, 10, 12)] == [2.0, 1.0, 0.0, 0.0]
    assert float(decayed(LossContext(**{**ctx.__dict__, "step": 5}))) == pytest.approx(
        0.5 * float(TGALoss(layers=(1,))(ctx)), rel=1e-5
    )
    with pytest.raises(ValueError, match="total_steps"):
        TGALoss(layers=(1,), decay="linear").current_weight(1)
    no_caption = caption_batch(vlm.adapter, [None, None])
    ctx_none = LossContext(**{**ctx.__dict__, "batch": {**ctx.batch, **no_caption}})
    value = TGALoss(layers=(1,))(ctx_none)
    assert float(value) == 0.0 and ctx_none.extras["tga/rows"] == 0.0


def test_caption_strings_without_an_adapter(vlm: VLM, dataset: Path) -> None:
    """The organism's loop: no adapter in the context, caption strings in the batch."""
    ctx = multimodal_ctx(vlm, vlm.model, dataset, slice(0, 4), retrieved=False)
    captions = ["a red circle", None, "a fox", "a cat on a table"]
    tensors = caption_batch(vlm.adapter, captions, template="plain")
    with_tensors = LossContext(**{**ctx.__dict__, "batch": {**ctx.batch, **tensors}})
    strings_only = {k: v for k, v in ctx.batch.items() if not k.startswith("caption_")}
    organism = LossContext(
        **{**ctx.__dict__, "adapter": None, "batch": {**strings_only, "captions": captions}}
    )
    expected = TGALoss(layers=LAYERS)(with_tensors)
    got = TGALoss(layers=LAYERS, tokenizer=vlm.tokenizer, caption_template="plain")(organism)
    assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    assert organism.extras["tga/rows"] == 3.0
    with pytest.raises(ValueError, match="needs the model's adapter"):
        TGALoss(layers=LAYERS, tokenizer=vlm.tokenizer)(organism)  # chat template without an adapter
