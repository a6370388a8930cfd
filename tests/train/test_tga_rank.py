"""TGA's in-batch caption ranking (``negatives="batch"``): value, gradient direction, duplicates, stats."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from safegap.models import VLM, load_vlm
from safegap.probe import record
from safegap.train.config import TrainConfig
from safegap.train.data import ConversationEncoder, read_conversations
from safegap.train.hooks import LossContext, capture_hidden_states
from safegap.train.setup import configure_trainable, find_projector
from safegap.train.tga import TGALoss, caption_batch
from safegap.train.tga_rank import caption_groups, cosine_matrix, negative_mask, ranking_per_row

LAYERS = (1, 2)
EXISTING_KEYS = {"tga/value", "tga/rows", "tga/cos_ic", "tga/caption_ms"}
RANK_KEYS = {"tga/rank", "tga/rank_rows", "tga/cos_neg", "tga/cos_gap", "tga/retrieval_acc"}


def multimodal_ctx(vlm: VLM, model: Any, dataset: Path, rows: slice) -> LossContext:
    """The multimodal pass of dataset rows (no retrieved text, so only the in-batch ranking ranks)."""
    encoder = ConversationEncoder(vlm.adapter, with_captions=True)
    examples = [type(e)(**{**e.__dict__, "retrieved_text": None}) for e in read_conversations(dataset)[rows]]
    batch = encoder.collate([encoder.encode(e) for e in examples])
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "pixel_values")}
    with capture_hidden_states(vlm.adapter.decoder_layers) as cap:
        model(**inputs, use_cache=False)
    return LossContext.from_capture(model, batch, cap, vlm.adapter, step=0, lm_loss=torch.zeros(()))


def with_captions(ctx: LossContext, captions: list[str | None]) -> LossContext:
    return LossContext(**{**ctx.__dict__, "batch": {**ctx.batch, **caption_batch(ctx.adapter, captions)}})


def dataset_captions(dataset: Path, rows: slice) -> list[str]:
    return [e.caption for e in read_conversations(dataset)[rows] if e.caption is not None]


# --- the differentiable core, on free tensors ---------------------------------------------------


def shared_direction_captions(n: int = 4, dim: int = 16, common: float = 0.97) -> torch.Tensor:
    """``n`` captions ``common·u + b·e_k`` (orthonormal u, e_k): pairwise cosine ``common²``."""
    basis = torch.linalg.qr(torch.randn(dim, n + 1, generator=torch.Generator().manual_seed(0)))[0].T
    return common * basis[0] + (1 - common**2) ** 0.5 * basis[1 : n + 1]


def matched_minus_mismatched(image: torch.Tensor, captions: torch.Tensor) -> float:
    cos = cosine_matrix(image, captions)
    n = len(captions)
    pos = cos.diagonal()
    return float((pos - (cos.sum(dim=1) - pos) / (n - 1)).mean())


def optimise(image: torch.Tensor, captions: torch.Tensor, rank: bool, steps: int = 50) -> torch.Tensor:
    image = image.clone().requires_grad_()
    negatives = negative_mask(torch.arange(len(captions)))
    opt = torch.optim.SGD([image], lr=0.5)
    for _ in range(steps):
        loss = -F.cosine_similarity(image, captions, dim=-1).sum()
        if rank:
            loss = loss + ranking_per_row(image, captions, negatives)[0].sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return image.detach()


def test_ranking_separates_where_pull_only_cannot() -> None:
    captions = shared_direction_captions()
    caption_gap = 1.0 - float(cosine_matrix(captions, captions)[0, 1])  # ≈ 0.06
    # Collapsed start: every image at the captions' common direction (matched ≈ mismatched).
    collapsed = captions.mean(dim=0).repeat(len(captions), 1)
    collapsed = collapsed + 0.01 * torch.randn(collapsed.shape, generator=torch.Generator().manual_seed(1))
    assert abs(matched_minus_mismatched(collapsed, captions)) < 0.01
    pull = optimise(collapsed, captions, rank=False)
    ranked = optimise(collapsed, captions, rank=True)
    # Pull-only ends at I ∝ C: it cannot separate beyond the captions' own similarity.
    assert matched_minus_mismatched(pull, captions) <= caption_gap + 1e-3
    assert matched_minus_mismatched(ranked, captions) > caption_gap + 0.02
    # Started at its own optimum (I = C), pull-only does not move at all; the ranking term does.
    at_captions = optimise(captions, captions, rank=False, steps=5)
    torch.testing.assert_close(at_captions, captions)
    assert matched_minus_mismatched(optimise(captions, captions, rank=True, steps=5), captions) > caption_gap


def test_gradient_pushes_toward_own_caption_and_away_from_negative() -> None:
    e = torch.eye(3)
    own, other = e[0] + e[1], e[0] - e[1]  # row 0's caption and row 1's (a negative for row 0)
    images = torch.stack([e[0], e[2]]).requires_grad_()
    rank, _ = ranking_per_row(images, torch.stack([own, other]), negative_mask(torch.tensor([0, 1])))
    assert float(rank[0].detach()) == pytest.approx(float(F.softplus(torch.tensor(0.0))))  # cos_neg = cos_pos
    rank[0].backward()
    assert images.grad is not None and float(images.grad[1].abs().sum()) == 0.0
    before, after = e[0].unsqueeze(0), (images - 0.1 * images.grad).detach()[:1]
    assert F.cosine_similarity(after, own.unsqueeze(0)) > F.cosine_similarity(before, own.unsqueeze(0))
    assert F.cosine_similarity(after, other.unsqueeze(0)) < F.cosine_similarity(before, other.unsqueeze(0))


def test_temperature_and_margin_give_a_smooth_hinge() -> None:
    image = torch.randn(3, 8, generator=torch.Generator().manual_seed(2))
    targets = torch.randn(3, 8, generator=torch.Generator().manual_seed(3))
    negatives = negative_mask(torch.tensor([0, 1, 2]))
    cos = cosine_matrix(image, targets)
    z = cos - cos.diagonal().unsqueeze(1) + 0.2
    hinge = torch.where(negatives, z.clamp_min(0), torch.zeros_like(z)).sum(1) / 2
    rank, _ = ranking_per_row(image, targets, negatives, margin=0.2, temperature=1e-4)
    torch.testing.assert_close(rank, hinge, atol=1e-4, rtol=0)
    paper = torch.where(negatives, F.softplus(z - 0.2), torch.zeros_like(z)).sum(1) / 2
    torch.testing.assert_close(ranking_per_row(image, targets, negatives)[0], paper)


# --- on the tiny LLaVA ----------------------------------------------------------------------------


def test_duplicate_captions_are_not_negatives(vlm: VLM) -> None:
    caps = caption_batch(vlm.adapter, ["a red circle", "a cat", "a red circle", None, "a blue square"])
    groups = caption_groups(caps, torch.tensor([0, 1, 2, 4]))  # rows with a caption
    assert groups.tolist() == [0, 1, 0, 2]
    assert negative_mask(groups).tolist() == [
        [False, True, False, True],
        [True, False, True, True],
        [False, True, False, True],
        [True, True, True, False],
    ]


def test_value_and_stats_match_an_independent_computation(vlm: VLM, dataset: Path) -> None:
    """Rows 0–7 repeat the four captions twice: each row has 6 negatives, not 7."""
    ctx = multimodal_ctx(vlm, vlm.model, dataset, slice(0, 8))
    term = TGALoss(layers=LAYERS, negatives="batch", rank_weight=0.5)
    value = float(term(ctx).detach())
    captions = dataset_captions(dataset, slice(0, 8))
    assert len(set(captions)) == 4
    caption = caption_batch(vlm.adapter, captions)
    rec = record(
        vlm,
        {"input_ids": caption["caption_input_ids"], "attention_mask": caption["caption_attention_mask"]},
        layers=list(LAYERS),
        positions=caption["caption_token_mask"],
    )
    n = len(captions)
    negatives = torch.tensor([[captions[i] != captions[k] for k in range(n)] for i in range(n)])
    assert negatives.sum(dim=1).tolist() == [6] * n
    pull = rank = correct = cos_neg = 0.0
    for layer in LAYERS:
        c = torch.stack([rec.states[layer][rec.row_index == r].mean(0) for r in range(n)])
        h = ctx.hidden_states[layer].detach()
        i = torch.stack([h[r][ctx.image_mask[r]].mean(0) for r in range(n)])
        cos = torch.stack([F.cosine_similarity(i[r].unsqueeze(0), c, dim=-1) for r in range(n)])
        pos = cos.diagonal()
        pull -= float(pos.mean())
        rank += float((F.softplus(cos - pos.unsqueeze(1)) * negatives).sum(1).div(6).mean())
        correct += float((pos > cos.masked_fill(~negatives, -2).amax(1)).float().mean())
        cos_neg += float(cos[negatives].mean())
    assert value == pytest.approx(pull + 0.5 * rank, rel=1e-4)
    assert ctx.extras["tga/value"] == pytest.approx(value, rel=1e-6)
    assert set(ctx.extras) == EXISTING_KEYS | RANK_KEYS
    assert ctx.extras["tga/rank"] == pytest.approx(rank, rel=1e-4)  # unweighted, summed over layers
    assert ctx.extras["tga/rank_rows"] == 8.0
    assert ctx.extras["tga/cos_neg"] == pytest.approx(cos_neg / len(LAYERS), rel=1e-4)
    assert ctx.extras["tga/cos_gap"] == pytest.approx(
        ctx.extras["tga/cos_ic"] - ctx.extras["tga/cos_neg"], abs=1e-5
    )
    assert ctx.extras["tga/retrieval_acc"] == pytest.approx(correct / len(LAYERS))
    assert 0.0 <= ctx.extras["tga/retrieval_acc"] <= 1.0


def test_zero_without_distinct_negatives_and_off_by_default(vlm: VLM, dataset: Path) -> None:
    ctx = multimodal_ctx(vlm, vlm.model, dataset, slice(0, 3))
    same = with_captions(ctx, ["a red circle", "a red circle", None])
    pull = float(TGALoss(layers=LAYERS)(same).detach())
    assert set(same.extras) == EXISTING_KEYS  # negatives="none" logs nothing new
    ranked = TGALoss(layers=LAYERS, negatives="batch", rank_weight=3.0)
    assert float(ranked(same).detach()) == pull
    assert same.extras["tga/rank"] == 0.0 and same.extras["tga/rank_rows"] == 0.0
    assert "tga/retrieval_acc" not in same.extras and "tga/cos_neg" not in same.extras
    alone = with_captions(ctx, ["a red circle", None, None])
    assert float(ranked(alone).detach()) == float(TGALoss(layers=LAYERS)(alone).detach())
    nothing = with_captions(ctx, [None, None, None])
    assert float(ranked(nothing).detach()) == 0.0 and nothing.extras["tga/rank"] == 0.0


def test_ranking_back_propagates_and_decays(vlm: VLM, dataset: Path) -> None:
    model = configure_trainable(
        vlm.model, vlm.adapter, TrainConfig(model="", data="", out="", stage="projector")
    )
    ctx = multimodal_ctx(vlm, model, dataset, slice(0, 4))
    ranked = TGALoss(layers=LAYERS, negatives="batch")
    rank_only = ranked(ctx) - TGALoss(layers=LAYERS)(ctx)
    assert float(rank_only.detach()) > 0
    rank_only.backward()
    projector, _ = find_projector(model)
    grads = [p.grad for n, p in model.named_parameters() if n.startswith(projector + ".")]
    assert grads and all(g is not None and float(g.abs().sum()) > 0 for g in grads)
    decayed = TGALoss(layers=LAYERS, negatives="batch", decay="linear", total_steps=10)
    half = LossContext(**{**ctx.__dict__, "step": 5, "extras": {}})
    assert float(decayed(half).detach()) == pytest.approx(0.5 * float(ranked(ctx).detach()), rel=1e-5)


def test_projector_training_separates_only_with_the_ranking_term(tiny_llava_dir: Path, dataset: Path) -> None:
    """The organism's symptom, small: pull-only raises matched and mismatched cosines together."""

    def train(rank_weight: float) -> dict[str, float]:
        vlm = load_vlm(tiny_llava_dir)
        config = TrainConfig(model="", data="", out="", stage="projector")
        model = configure_trainable(vlm.model, vlm.adapter, config)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
        term = TGALoss(layers=LAYERS, negatives="batch", rank_weight=rank_weight)  # 0: stats only
        for _ in range(12):
            ctx = multimodal_ctx(vlm, model, dataset, slice(0, 4))
            loss = term(ctx)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return ctx.extras

    fresh = load_vlm(tiny_llava_dir)
    start = multimodal_ctx(fresh, fresh.model, dataset, slice(0, 4))
    TGALoss(layers=LAYERS, negatives="batch")(start)
    pull, ranked = train(0.0), train(1.0)
    assert pull["tga/cos_ic"] > start.extras["tga/cos_ic"] + 0.2  # pull-only: both rise ...
    assert pull["tga/cos_neg"] > start.extras["tga/cos_neg"] + 0.2
    assert ranked["tga/cos_ic"] == pytest.approx(pull["tga/cos_ic"], abs=0.02)
    assert ranked["tga/cos_neg"] < pull["tga/cos_neg"] - 0.02  # ... the ranking holds negatives off
    assert ranked["tga/cos_gap"] > pull["tga/cos_gap"] + 0.02
    assert ranked["tga/retrieval_acc"] >= pull["tga/retrieval_acc"]


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="negatives"):
        TGALoss(layers=(1,), negatives="retrieved")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rank_temperature"):
        TGALoss(layers=(1,), negatives="batch", rank_temperature=0.0)
