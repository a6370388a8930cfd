"""What a training variant changes inside the organism, per seed: the figures the ReGap and TGA
claims are about, next to the refusal rates the study measures.

* ``mir_layer``: MIR's per-layer term, the Fréchet distance between image tokens and the text
  tokens after them (text-centrically scaled, outliers replaced, as in :mod:`safegap.gap`), at
  the layer ReGap regularises (decoder layer 0 by default), on the finished organism and after
  stage 2 (projector pretraining, where ReGap acts);
* ``semantic_shift``: TGA's per-layer cosine between the mean image-token state and the mean
  state of the image's caption given as text, with the mismatched-caption baseline;
* ``caption_loss``: the language-model loss of held-out captioning rows after stage 2 (the
  objective ReGap must not spoil; the issue allows a 10 % rise).

The prompts and images are the eval split's, the same for every seed and variant, so variants
can be compared per seed.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from safegap.gap.collect import measure_gap
from safegap.gap.shift import semantic_shift
from safegap.models.loading import VLM, load_vlm
from safegap.organism import data
from safegap.organism.diagnostics import organism_records
from safegap.organism.training import collate, encode
from safegap.organism.world import World

#: Decoder layer whose image-text gap is reported (ReGap's default layer).
GAP_LAYER = 0


def mir_layer(vlm: VLM, world: World, layer: int = GAP_LAYER, n: int = 32) -> float:
    """MIR's term at ``layer`` (Fréchet distance, image vs text tokens) on eval requests with scenes."""
    result = measure_gap(
        vlm, organism_records(world, "eval", n), layers=[layer], batch_size=32, probe_layer=None
    )
    return float(result.layers[0].fd)


@torch.inference_mode()
def caption_loss(vlm: VLM, world: World, n_images: int = 128, batch_size: int = 32) -> float:
    """Mean token loss on captioning rows of fresh scene and object images (stage 2's task)."""
    rng = random.Random("organism-caption-loss")
    objects = world.visual_objects(True) + world.visual_objects(False)
    pool = data.image_pool(rng, n_images, objects, 1, vlm.processor.image_processor)
    rows = encode(vlm.tokenizer, data.caption_examples(pool, rng), int(vlm.model.config.image_seq_length))
    total, tokens = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = collate(rows[start : start + batch_size], int(vlm.tokenizer.pad_token_id), pool.pixel_values)
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
        logits = vlm.model(**inputs).logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
        )
        total += float(loss)
        tokens += int((labels != -100).sum())
    return total / max(tokens, 1)


def variant_measures(path: str | Path, world: World, n: int = 32) -> dict[str, Any]:
    """The figures above for one organism checkpoint directory (with ``stages/after_stage2``)."""
    root = Path(path)
    final = load_vlm(root)
    shift = semantic_shift(final, organism_records(world, "eval", n), layers="all", batch_size=32)
    out: dict[str, Any] = {
        "layer": GAP_LAYER,
        "mir_layer": mir_layer(final, world, n=n),
        "semantic_shift": {
            "layers": shift.layers,
            "matched": shift.matched_cosine,
            "mismatched": shift.mismatched_cosine,
        },
    }
    stage2 = root / "stages" / "after_stage2"
    if (stage2 / "config.json").exists():
        snap = load_vlm(stage2)
        out["after_stage2"] = {
            "mir_layer": mir_layer(snap, world, n=n),
            "caption_loss": caption_loss(snap, world),
        }
    return out
