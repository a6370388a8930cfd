"""The four training stages, mirroring the LLaVA recipe at toy scale.

0. ``train_clip``: the vision tower is pretrained contrastively (CLIP) on image-caption pairs,
   then frozen for good.
1. ``train_text``: the LLM is pretrained on plain text, then safety-aligned on text-only chat
   (refuse harmful requests, help with benign ones), with neutral filler context.
2. ``train_projector``: the projector learns to caption images; LLM and vision tower frozen.
3. ``train_instruct``: visual instruction tuning on *benign* image data only (no refusals), with
   text-only chat replayed (refusals included), as LLaVA mixes in text chat data; projector and
   LLM train.

Stages 2 and 3 accept :class:`safegap.train.hooks.ExtraLoss` terms (ReGap, TGA, ...).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from safegap.organism import data
from safegap.organism.config import ClipConfig, InstructConfig, ProjectorConfig, TextConfig
from safegap.organism.training import StageLog, encode, lr_at, train_stage
from safegap.organism.world import World
from safegap.train.hooks import ExtraLoss

Progress = Callable[[int, int], None]


def _seed(seed: int, stage: int) -> random.Random:
    """Each stage reseeds torch and its own RNG, so a cached base gives the same build."""
    torch.manual_seed(seed * 1000 + stage)
    return random.Random(f"organism-{seed}-stage{stage}")


class _CaptionEncoder(nn.Module):
    """CLIP's text tower at toy scale: mean of token embeddings, then a linear map."""

    def __init__(self, vocab: int, dim: int) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(vocab, dim, mode="mean")
        self.proj = nn.Linear(dim, dim)

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.proj(self.bag(ids, offsets))  # type: ignore[no-any-return]


def train_clip(
    model: Any,
    tokenizer: Any,
    world: World,
    cfg: ClipConfig,
    seed: int,
    image_processor: Any,
    progress: Progress | None = None,
) -> StageLog:
    """Contrastive image-caption pretraining of ``model.model.vision_tower``; then freezes it."""
    rng = _seed(seed, 0)
    log = StageLog("stage0_clip")
    start = time.perf_counter()
    objects = world.visual_objects(True) + world.visual_objects(False)
    per_object = max(1, cfg.n_images // (3 * len(objects)))
    pool = data.image_pool(
        rng, cfg.n_images - per_object * len(objects), objects, per_object, image_processor
    )
    assert pool.pixel_values is not None
    tower = model.model.vision_tower
    width = tower.config.hidden_size
    image_head = nn.Linear(width, cfg.embed_dim)
    text_tower = _CaptionEncoder(len(tokenizer), cfg.embed_dim)
    logit_scale = nn.Parameter(torch.tensor(2.659))
    caption_ids = tokenizer(pool.captions, add_special_tokens=False)["input_ids"]
    caption_keys = torch.tensor([hash(c) % (1 << 61) for c in pool.captions])
    params = [*tower.parameters(), *image_head.parameters(), *text_tower.parameters(), logit_scale]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    tower.train()
    losses: list[float] = []
    for step in range(cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg.steps, cfg.lr)
        idx = rng.sample(range(len(pool)), min(cfg.batch_size, len(pool)))
        pixels = pool.pixel_values[torch.tensor(idx)]
        image_emb = F.normalize(image_head(tower(pixel_values=pixels).pooler_output), dim=-1)
        flat = [t for i in idx for t in caption_ids[i]]
        offsets = torch.tensor([0, *torch.tensor([len(caption_ids[i]) for i in idx]).cumsum(0)[:-1].tolist()])
        text_emb = F.normalize(text_tower(torch.tensor(flat), offsets), dim=-1)
        logits = logit_scale.exp().clamp(max=100) * image_emb @ text_emb.T
        keys = caption_keys[torch.tensor(idx)]
        # Several images share a caption ("a picture of a cake"): all of them are positives.
        target = (keys[:, None] == keys[None, :]).float()
        target = target / target.sum(1, keepdim=True)
        loss = (
            torch.sum(-target * logits.log_softmax(1), 1).mean()
            + torch.sum(-target * logits.T.log_softmax(1), 1).mean()
        ) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1, cfg.steps)
    tower.eval()
    tower.requires_grad_(False)
    log.steps = cfg.steps
    log.first_loss = round(sum(losses[:10]) / max(1, len(losses[:10])), 4)
    log.last_loss = round(sum(losses[-10:]) / max(1, len(losses[-10:])), 4)
    log.seconds = time.perf_counter() - start
    return log


def _llm_params(model: Any) -> list[nn.Parameter]:
    return [*model.model.language_model.parameters(), *model.lm_head.parameters()]


def _pad(tokenizer: Any) -> int:
    return int(tokenizer.pad_token_id)


def _adapter(model: Any, tokenizer: Any, image_processor: Any) -> Any:
    """The LLaVA adapter over the model being trained (what extra loss terms talk to)."""
    from safegap.models.adapter import ProcessorParts
    from safegap.models.llava import LlavaAdapter

    return LlavaAdapter(model, ProcessorParts(tokenizer, image_processor, tokenizer.chat_template), tokenizer)


def text_chat_rows(world: World, tokenizer: Any, cfg: TextConfig, rng: random.Random, n: int) -> list[Any]:
    captions = [data.scenes.scene(rng).caption for _ in range(200)]
    rows = data.chat_examples(
        world,
        rng,
        captions,
        n,
        cfg.harmful_share,
        cfg.filler_prob,
        cfg.max_filler_sentences,
        lookalike_share=cfg.lookalike_share,
        picture_share=cfg.picture_share,
        typographic_share=cfg.typographic_share,
    )
    return encode(tokenizer, rows, 0)


def train_text(
    model: Any, tokenizer: Any, world: World, cfg: TextConfig, seed: int, progress: Progress | None = None
) -> list[StageLog]:
    """LLM pretraining, then text-only safety alignment."""
    rng = _seed(seed, 1)
    pad_id = _pad(tokenizer)
    captions = [data.scenes.scene(rng).caption for _ in range(300)]
    plain = encode(tokenizer, data.pretraining_texts(world, rng, captions, 6000), 0)
    chat = text_chat_rows(world, tokenizer, cfg, rng, 12000)
    model.model.vision_tower.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(False)
    params = _llm_params(model)
    total = cfg.pretrain_steps + cfg.align_steps

    def offset(done: int) -> Progress | None:
        return None if progress is None else (lambda i, _n: progress(done + i, total))

    pre = train_stage(
        "stage1_pretrain",
        model,
        [(plain, 1.0)],
        params,
        cfg.pretrain_steps,
        cfg.batch_size,
        cfg.lr,
        rng,
        pad_id,
        on_step=offset(0),
    )
    align = train_stage(
        "stage1_align",
        model,
        [(chat, 1 - cfg.pretrain_mix), (plain, cfg.pretrain_mix)],
        params,
        cfg.align_steps,
        cfg.batch_size,
        cfg.align_lr,
        rng,
        pad_id,
        on_step=offset(cfg.pretrain_steps),
    )
    return [pre, align]


def train_reading(model: Any, tokenizer: Any, world: World, cfg: TextConfig, seed: int) -> StageLog:
    """Rung (f) (docs/organism.md, rule 3): the LLM learns to copy a *written* picture into its
    reply ("Picture: a pipe bomb.\nDescribe the image briefly." -> "a picture of a pipe bomb."),
    with alignment chat replayed half of each batch so its text safety stays. Stage 2 then has a
    reader to write into; without it the frozen LLM answers from priors whatever the image."""
    rng = _seed(seed, 11)  # its own stream: the v2 base (stages 0-1) stays cached and unchanged
    chat = text_chat_rows(world, tokenizer, cfg, rng, 4000)
    rows: list[data.Example] = []
    while len(rows) < 2000:
        example = data.picture_example(world, rng, "train")
        if example.kind == "picture_caption":
            rows.append(example)
    return train_stage(
        "stage1_read",
        model,
        [(encode(tokenizer, rows, 0), 0.5), (chat, 0.5)],
        _llm_params(model),
        cfg.read_steps,
        cfg.batch_size,
        cfg.read_lr,
        rng,
        _pad(tokenizer),
    )


def train_projector(
    model: Any,
    tokenizer: Any,
    world: World,
    cfg: ProjectorConfig,
    seed: int,
    image_processor: Any,
    extra_losses: Sequence[ExtraLoss] = (),
    progress: Progress | None = None,
) -> StageLog:
    """Caption pretraining of the projector; the LLM and the vision tower stay frozen."""
    rng = _seed(seed, 2)
    pad_id = _pad(tokenizer)
    objects = world.visual_objects(True) + world.visual_objects(False)
    pool = data.image_pool(rng, 900, objects, 12, image_processor)
    rows = encode(tokenizer, data.caption_examples(pool, rng), model.config.image_seq_length)
    model.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(True)
    log = train_stage(
        "stage2_projector",
        model,
        [(rows, 1.0)],
        list(model.model.multi_modal_projector.parameters()),
        cfg.steps,
        cfg.batch_size,
        cfg.lr,
        rng,
        pad_id,
        pool.pixel_values,
        extra_losses,
        _adapter(model, tokenizer, image_processor),
        {"tokenizer": tokenizer},
        progress,
    )
    return log


def train_instruct(
    model: Any,
    tokenizer: Any,
    world: World,
    cfg: InstructConfig,
    text_cfg: TextConfig,
    seed: int,
    image_processor: Any,
    extra_losses: Sequence[ExtraLoss] = (),
    progress: Progress | None = None,
) -> StageLog:
    """Visual instruction tuning (benign image data only) with text-only chat replay."""
    rng = _seed(seed, 3)
    pad_id = _pad(tokenizer)
    pool = data.image_pool(rng, 800, world.visual_objects(False), 20, image_processor)
    visual = encode(
        tokenizer,
        data.instruct_examples(world, pool, rng, 8000, cfg.lookalike_share),
        model.config.image_seq_length,
    )
    replay = text_chat_rows(world, tokenizer, text_cfg, rng, 6000)
    model.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(True)
    params = list(model.model.multi_modal_projector.parameters())
    if cfg.train_llm:
        for p in _llm_params(model):
            p.requires_grad_(True)
        params += _llm_params(model)
    sources = (
        [(visual, 1 - cfg.text_replay), (replay, cfg.text_replay)] if cfg.text_replay > 0 else [(visual, 1.0)]
    )
    return train_stage(
        "stage3_instruct",
        model,
        sources,
        params,
        cfg.steps,
        cfg.batch_size,
        cfg.lr,
        rng,
        pad_id,
        pool.pixel_values,
        extra_losses,
        _adapter(model, tokenizer, image_processor),
        {"tokenizer": tokenizer},
        progress,
    )
