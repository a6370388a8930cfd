"""The training loop shared by the organism's stages, with the :class:`LossContext` hook.

Every step runs the real ``LlavaForConditionalGeneration`` forward (so what is trained is what
``load_vlm`` later runs). When extra loss terms are given, forward hooks on the decoder layers
(:func:`safegap.train.hooks.capture_hidden_states`) capture each layer's output -- the residual
stream *before* the final norm, which is what :class:`~safegap.train.hooks.LossContext` promises
(HF's ``output_hidden_states`` would give the embeddings first and the *final-normed* last layer
last, so it is not used) -- and ``weight * term(ctx)`` is added to the language-model loss for
each term (``weight`` is the term's attribute, 1.0 if it has none). ``ctx.batch`` carries the
usual model inputs plus ``kinds`` and ``captions`` (what each row's image shows, or None: TGA's
caption pass) and ``tokenizer``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from safegap.organism.data import Example, render_prompt
from safegap.train.hooks import ExtraLoss, LossContext, add_extra_losses, capture_hidden_states

IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    labels: list[int]
    image: int | None
    kind: str
    caption: str | None


def encode(tokenizer: Any, examples: Sequence[Example], image_tokens: int) -> list[Encoded]:
    """Token ids with labels on the reply (chat) or on everything (plain text)."""
    expand = "<image>" * image_tokens
    chat = [e for e in examples if e.reply is not None]
    plain = [e for e in examples if e.reply is None]
    out: list[Encoded] = []
    eos = tokenizer.eos_token_id
    if chat:
        prompts = [render_prompt(e.text, e.image is not None).replace("<image>", expand) for e in chat]
        replies = [" " + str(e.reply) for e in chat]
        p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        r_ids = tokenizer(replies, add_special_tokens=False)["input_ids"]
        for e, p, r in zip(chat, p_ids, r_ids, strict=True):
            target = [*r, eos]
            out.append(Encoded([*p, *target], [IGNORE] * len(p) + target, e.image, e.kind, e.caption))
    if plain:
        t_ids = tokenizer([e.text for e in plain], add_special_tokens=False)["input_ids"]
        for e, t in zip(plain, t_ids, strict=True):
            ids = [*t, eos]
            out.append(Encoded(ids, ids[:], None, e.kind, e.caption))
    return out


def collate(rows: Sequence[Encoded], pad_id: int, pixel_pool: torch.Tensor | None) -> dict[str, Any]:
    """Right-padded batch; ``pixel_values`` holds the rows' images in row order (as LLaVA expects)."""
    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.ids)
        ids[i, :n] = torch.tensor(r.ids)
        labels[i, :n] = torch.tensor(r.labels)
        mask[i, :n] = 1
    batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    images = [r.image for r in rows if r.image is not None]
    if images:
        if pixel_pool is None:
            raise ValueError("batch has image rows but the stage has no image pool")
        batch["pixel_values"] = pixel_pool[torch.tensor(images)]
    batch["kinds"] = [r.kind for r in rows]
    batch["captions"] = [r.caption for r in rows]
    return batch


@dataclass
class StageLog:
    """Loss curve summary and wall time of one stage."""

    name: str
    steps: int = 0
    seconds: float = 0.0
    first_loss: float = math.nan
    last_loss: float = math.nan
    extras: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "seconds": round(self.seconds, 2),
            "first_loss": self.first_loss,
            "last_loss": self.last_loss,
            **self.extras,
        }


def lr_at(step: int, total: int, base: float, warmup_frac: float = 0.05, floor: float = 0.1) -> float:
    """Linear warm-up, then cosine decay to ``floor * base``."""
    warm = max(1, int(total * warmup_frac))
    if step < warm:
        return base * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


Source = tuple[Sequence[Encoded], float]


def sample_batch(sources: Sequence[Source], batch_size: int, rng: random.Random) -> list[Encoded]:
    """``batch_size`` rows, each source contributing its share (rounded, at least the remainder)."""
    rows: list[Encoded] = []
    total = sum(w for _, w in sources)
    for k, (pool, weight) in enumerate(sources):
        n = batch_size - len(rows) if k == len(sources) - 1 else round(batch_size * weight / total)
        rows.extend(rng.choice(pool) for _ in range(max(0, n)))
    return rows


def train_stage(
    name: str,
    model: Any,
    sources: Sequence[Source],
    params: Sequence[nn.Parameter],
    steps: int,
    batch_size: int,
    lr: float,
    rng: random.Random,
    pad_id: int,
    pixel_pool: torch.Tensor | None = None,
    extra_losses: Sequence[ExtraLoss] = (),
    adapter: Any = None,
    batch_extras: dict[str, Any] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> StageLog:
    """Train ``params`` for ``steps`` AdamW steps on batches drawn from ``sources``."""
    log = StageLog(name)
    start = time.perf_counter()
    # tied embeddings appear twice in a module walk; AdamW must see each tensor once
    params = list({id(p): p for p in params if p.requires_grad}.values())
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    model.train()
    recent: list[float] = []
    extras_sum: dict[str, float] = {}
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        batch = collate(sample_batch(sources, batch_size, rng), pad_id, pixel_pool)
        inputs = {
            k: batch[k] for k in ("input_ids", "attention_mask", "labels", "pixel_values") if k in batch
        }
        if extra_losses:
            if adapter is None:
                raise ValueError(f"stage {name}: extra losses need the model's adapter")
            with capture_hidden_states(adapter.decoder_layers) as capture:
                out = model(**inputs)
            ctx = LossContext.from_capture(
                model, {**batch, **(batch_extras or {})}, capture, adapter, step=step, lm_loss=out.loss
            )
            loss = add_extra_losses(ctx, extra_losses)
            for term in extra_losses:
                for key, value in ctx.extras.items():
                    if key.startswith(term.name):
                        extras_sum[key] = extras_sum.get(key, 0.0) + float(value)
        else:
            out = model(**inputs)
            loss = out.loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        recent.append(float(out.loss.detach()))
        if step == 9 or (steps < 10 and step == steps - 1):
            log.first_loss = round(sum(recent) / len(recent), 4)
        if on_step is not None:
            on_step(step + 1, steps)
    model.eval()
    log.steps = steps
    tail = recent[-10:]
    log.last_loss = round(sum(tail) / max(1, len(tail)), 4)
    log.extras = {f"mean_{k}": round(v / max(1, steps), 5) for k, v in extras_sum.items()}
    log.seconds = time.perf_counter() - start
    return log
