"""ReGap: the algebra on synthetic states, and gradients on the tiny LLaVA."""

from __future__ import annotations

import pytest
import torch

from safegap.models import VLM
from safegap.train.config import TrainConfig
from safegap.train.data import ConversationEncoder, read_conversations
from safegap.train.hooks import LossContext, add_extra_losses, capture_hidden_states
from safegap.train.regap import ReGapLoss, after_image_mask, parse_regap_layers
from safegap.train.setup import configure_trainable, find_projector

# Two rows of 7 positions: [text, img, img, text, text, text, pad]; row 1 has one more pad.
IMAGE = torch.tensor([[0, 1, 1, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)
VALID = torch.tensor([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0, 0]], dtype=torch.bool)


def ctx_for(states: torch.Tensor, step: int = 0, lm: float = 2.0, layers: int = 1) -> LossContext:
    return LossContext(
        model=None,
        batch={},
        hidden_states=[states] * layers,
        image_mask=IMAGE,
        text_mask=~IMAGE & VALID,
        step=step,
        lm_loss=torch.tensor(lm),
        embeddings=states * 0.5,
    )


def random_states(seed: int = 0, dim: int = 8) -> torch.Tensor:
    return torch.randn(2, 7, dim, generator=torch.Generator().manual_seed(seed))


def test_after_image_mask_keeps_text_after_the_last_image_token() -> None:
    mask = after_image_mask(IMAGE, ~IMAGE & VALID)
    expected = torch.tensor([[0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    no_image = torch.zeros_like(IMAGE)
    assert torch.equal(after_image_mask(no_image, VALID), VALID)  # rows without an image: all text


def test_value_is_zero_when_image_and_text_means_agree() -> None:
    states = random_states()
    centre = torch.randn(8)
    offset = torch.randn(8)
    states[:, 1], states[:, 2] = centre + offset, centre - offset
    states[0, 3:6] = torch.stack([centre + offset, centre - offset, centre])
    states[1, 3:5] = torch.stack([centre + 2 * offset, centre - 2 * offset])
    states[:, 0] = 100.0  # text before the image is not part of the default text set
    term = ReGapLoss(weight=3.0, warmup_steps=1)
    ctx = ctx_for(states)
    assert float(term(ctx)) == pytest.approx(0.0, abs=1e-10)
    assert ctx.extras["regap/value"] == pytest.approx(0.0, abs=1e-10)
    term_all = ReGapLoss(text_tokens="all", alpha_mode="none")
    assert float(term_all(ctx_for(states))) > 100.0  # counting the pre-image text breaks the agreement


def test_value_matches_the_formula_with_batch_pooled_means() -> None:
    states = random_states(1)
    text = ~IMAGE & VALID & after_image_mask(IMAGE, ~IMAGE & VALID)
    mu_i = states[IMAGE].mean(0)
    mu_t = states[text].mean(0)
    a = 1.0 / states[text].norm(dim=-1).mean()
    expected = 0.5 * ((a * (mu_i - mu_t)) ** 2).sum()
    term = ReGapLoss(weight=0.5, warmup_steps=3)
    assert float(term(ctx_for(states))) == pytest.approx(float(expected) / 0.5, rel=1e-5)  # unweighted
    total = add_extra_losses(ctx_for(states, lm=2.0), [ReGapLoss(weight=0.5, warmup_steps=3)])
    assert float(total) == pytest.approx(2.0 + float(expected), rel=1e-5)  # the loop applies λ


def test_padding_is_excluded_from_the_means() -> None:
    states = random_states(2)
    term_a, term_b = ReGapLoss(warmup_steps=1), ReGapLoss(warmup_steps=1)
    before = float(term_a(ctx_for(states)))
    noisy = states.clone()
    noisy[~VALID] = 1e4
    assert float(term_b(ctx_for(noisy))) == pytest.approx(before, rel=1e-6)


def test_scale_is_averaged_over_warmup_then_frozen() -> None:
    states = random_states(3)
    text = after_image_mask(IMAGE, ~IMAGE & VALID)
    norm = float(states[text].norm(dim=-1).mean())
    term = ReGapLoss(warmup_steps=2)
    seen = []
    for step, factor in enumerate((1.0, 3.0, 10.0, 100.0)):
        ctx = ctx_for(states * factor, step=step)
        term(ctx)
        seen.append((ctx.extras["regap/a_l0"], ctx.extras["regap/frozen"]))
    warm_mean = 1.0 / ((norm + 3.0 * norm) / 2)
    assert seen[0] == (pytest.approx(1.0 / norm, rel=1e-5), 0.0)
    assert seen[1] == (pytest.approx(warm_mean, rel=1e-5), 0.0)
    assert seen[2] == (pytest.approx(warm_mean, rel=1e-5), 1.0)  # frozen: step 2's norms ignored
    assert seen[3] == seen[2]
    restored = ReGapLoss(warmup_steps=2)
    restored.load_state_dict(term.state_dict())
    ctx = ctx_for(states * 7.0, step=9)
    restored(ctx)
    assert ctx.extras["regap/a_l0"] == pytest.approx(warm_mean, rel=1e-5)


def test_scale_is_never_differentiated() -> None:
    states = random_states(4).requires_grad_(True)
    ReGapLoss(alpha_mode="batch_text_norm")(ctx_for(states)).backward()
    grad = states.grad
    assert grad is not None
    text = after_image_mask(IMAGE, ~IMAGE & VALID)
    # d/dx of a²‖μ_I − μ_T‖² with a constant: text grads are -(image grads summed) spread evenly
    assert torch.allclose(grad[IMAGE].sum(0), -grad[text].sum(0), atol=1e-6)


def test_loss_balance_sets_the_gap_term_to_the_lm_loss() -> None:
    states = random_states(5)
    term = ReGapLoss(alpha_mode="loss_balance", warmup_steps=1)
    value = float(term(ctx_for(states, step=0, lm=2.5)))
    assert value == pytest.approx(2.5, rel=1e-5)
    assert float(term(ctx_for(states * 2, step=1, lm=9.0))) == pytest.approx(2.5 * 4, rel=1e-5)  # frozen


def test_unscaled_mode_and_embedding_layer() -> None:
    states = random_states(6)
    text = after_image_mask(IMAGE, ~IMAGE & VALID)
    raw = float(((states[IMAGE].mean(0) - states[text].mean(0)) ** 2).sum())
    assert float(ReGapLoss(alpha_mode="none")(ctx_for(states))) == pytest.approx(raw, rel=1e-5)
    embed = ReGapLoss(alpha_mode="none", layers=("embed",))
    assert float(embed(ctx_for(states))) == pytest.approx(raw * 0.25, rel=1e-5)  # embeddings = states / 2
    both = ReGapLoss(alpha_mode="none", layers=parse_regap_layers("embed,0"))
    assert float(both(ctx_for(states))) == pytest.approx(raw * 1.25, rel=1e-5)


def test_covariance_terms() -> None:
    states = random_states(7)
    text = after_image_mask(IMAGE, ~IMAGE & VALID)
    trace = ReGapLoss(alpha_mode="none", cov_term="trace", cov_weight=1.0)
    mean_only = float(ReGapLoss(alpha_mode="none")(ctx_for(states)))
    expected_trace = float(states[IMAGE].var(0).sum() + states[text].var(0).sum())
    assert float(trace(ctx_for(states))) == pytest.approx(mean_only + expected_trace, rel=1e-5)
    match = ReGapLoss(alpha_mode="none", cov_term="match")
    cov_i = torch.cov(states[IMAGE].T)
    cov_t = torch.cov(states[text].T)
    expected_match = float(((cov_i - cov_t) ** 2).sum())
    assert float(match(ctx_for(states))) == pytest.approx(mean_only + expected_match, rel=1e-4)


def test_bad_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="alpha_mode"):
        ReGapLoss(alpha_mode="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="neither"):
        parse_regap_layers("first")
    with pytest.raises(ValueError, match="out of range"):
        ReGapLoss(layers=(5,))(ctx_for(random_states()))


def test_gradient_reaches_only_the_projector_in_projector_stage(vlm: VLM, dataset: object) -> None:
    cfg = TrainConfig(model="", data="", out="", stage="projector")
    model = configure_trainable(vlm.model, vlm.adapter, cfg)
    encoder = ConversationEncoder(vlm.adapter)
    rows = read_conversations(dataset)[:4]  # type: ignore[arg-type]
    batch = encoder.collate([encoder.encode(r) for r in rows])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with capture_hidden_states(vlm.adapter.decoder_layers) as cap:
        model(**inputs, use_cache=False)
    ctx = LossContext.from_capture(model, batch, cap, vlm.adapter, step=0, lm_loss=torch.zeros(()))
    add_extra_losses(ctx, [ReGapLoss(weight=1.0)]).backward()
    projector_name, _ = find_projector(model)
    for name, param in model.named_parameters():
        if name.startswith(projector_name + "."):
            assert param.grad is not None and float(param.grad.abs().sum()) > 0, name
        else:
            assert param.grad is None, name
