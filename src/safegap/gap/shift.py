"""Representation shift caused by the image: TGA's semantic shift and CMRM's five conditions.

Semantic shift (TGA, Xu et al. 2025): per layer, the cosine between the mean hidden state of the
image tokens (image + prompt pass) and the mean hidden state of the caption tokens (a genuinely
text-only pass with the caption in place of the image, caption tokens found from tokenizer
offsets). Raw cosines of LLM states are inflated by anisotropy, so a mismatched-caption baseline
(each image against another sample's caption) and the caption-retrieval accuracy are reported
beside it.

Five conditions (CMRM, Liu et al.): original image, blank image, noise image, caption as text, and
query only. Per layer, the distance of each condition's last-token state to the query-only state
of the same prompt, and a 2-D PCA of all conditions at chosen layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from safegap.data.images import blank_image, noise_image
from safegap.gap.collect import image_token_span, last_token_states, pooled_states, substring_span
from safegap.gap.data import GapRecord
from safegap.gap.metrics import paired_gap, unit_rows
from safegap.models.loading import VLM
from safegap.specs import Layers, resolve_layers


def caption_prompt(caption: str, prompt: str) -> str:
    """The text-only stand-in for ``image + prompt``: the caption where the image would be."""
    return f"{caption}\n{prompt}"


def _require(records: Sequence[GapRecord], what: str) -> None:
    for i, r in enumerate(records):
        if what == "image" and r.image is None:
            raise ValueError(f"record {r.id or i}: needs an image")
        if what == "caption" and not r.caption:
            raise ValueError(f"record {r.id or i}: needs a caption")


@dataclass
class SemanticShift:
    """Per layer: matched and mismatched image/caption cosine, and retrieval accuracy."""

    layers: list[int]
    matched_cosine: list[float]
    mismatched_cosine: list[float]
    retrieval_accuracy: list[float]
    l2i: list[float]
    rmg: list[float]
    samples: int

    def as_dict(self) -> dict[str, Any]:
        return {**vars(self), "chance_retrieval": 1 / self.samples}


def shift_from_pooled(image: torch.Tensor, caption: torch.Tensor, layers: Sequence[int]) -> SemanticShift:
    """Semantic-shift numbers from pooled ``(samples, layers, hidden)`` image and caption states."""
    n = image.shape[0]
    if n < 2:
        raise ValueError("the mismatched-caption baseline needs at least two samples")
    matched, mismatched, retrieval, l2i, rmg = [], [], [], [], []
    for j in range(len(layers)):
        a, b = unit_rows(image[:, j]), unit_rows(caption[:, j])
        cos = a @ b.T
        matched.append(float(cos.diagonal().mean()))
        mismatched.append(float((cos.sum() - cos.diagonal().sum()) / (n * (n - 1))))
        retrieval.append(float((cos.argmax(dim=1) == torch.arange(n)).double().mean()))
        gap = paired_gap(image[:, j], caption[:, j])
        l2i.append(gap.l2i)
        rmg.append(gap.rmg)
    return SemanticShift(list(layers), matched, mismatched, retrieval, l2i, rmg, n)


def pooled_image_and_caption(
    vlm: VLM,
    records: Sequence[GapRecord],
    layers: Sequence[int],
    batch_size: int = 8,
    system: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean image-token states (image + prompt pass) and mean caption-token states (text-only pass)."""
    _require(records, "image")
    _require(records, "caption")
    prompts = [r.prompt for r in records]
    images = [r.load_image() for r in records]
    image_states = pooled_states(vlm, prompts, images, image_token_span, layers, batch_size, system)
    texts = [caption_prompt(r.caption or "", r.prompt) for r in records]
    captions = [r.caption or "" for r in records]
    caption_states = pooled_states(vlm, texts, None, substring_span(captions), layers, batch_size, system)
    return image_states, caption_states


def semantic_shift(
    vlm: VLM,
    records: Sequence[GapRecord],
    layers: Layers = "all",
    batch_size: int = 8,
    system: str | None = None,
) -> SemanticShift:
    """TGA's per-layer image/caption cosine with a mismatched-caption baseline."""
    wanted = resolve_layers(layers, vlm.adapter.num_layers)
    image, caption = pooled_image_and_caption(vlm, records, wanted, batch_size, system)
    return shift_from_pooled(image, caption, wanted)


CONDITIONS = ("original", "blank_image", "noise_image", "caption_text", "query_only")


@dataclass
class FiveConditions:
    """Last-token states per condition ``(samples, layers, hidden)`` and the derived distances."""

    layers: list[int]
    states: dict[str, torch.Tensor]
    pca_layers: list[int] = field(default_factory=list)

    def distances(self) -> dict[str, dict[str, list[float]]]:
        """Per condition and layer, versus query-only: mean paired L2 distance, the same relative to
        the mean query-only norm, mean paired cosine distance, and the centroid distance."""
        query = self.states["query_only"].to(torch.float64)
        query_norm = query.norm(dim=-1).mean(dim=0)
        out = {}
        for name, states in self.states.items():
            if name == "query_only":
                continue
            s = states.to(torch.float64)
            paired = (s - query).norm(dim=-1).mean(dim=0)
            cosine = 1 - torch.nn.functional.cosine_similarity(s, query, dim=-1).mean(dim=0)
            centroid = (s.mean(dim=0) - query.mean(dim=0)).norm(dim=-1)
            out[name] = {
                "paired_l2": paired.tolist(),
                "paired_l2_relative": (paired / query_norm).tolist(),
                "cosine_distance": cosine.tolist(),
                "centroid_l2": centroid.tolist(),
            }
        return out

    def pca(self, layer: int) -> dict[str, Any]:
        """2-D PCA of every condition's states at ``layer`` (fitted on all of them together)."""
        j = self.layers.index(layer)
        names = list(self.states)
        stacked = torch.cat([self.states[n][:, j] for n in names]).to(torch.float64)
        centred = stacked - stacked.mean(dim=0)
        _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
        components = vh[:2]
        coords = centred @ components.T
        total = float((singular**2).sum())
        explained = [float(v**2 / total) if total > 0 else math.nan for v in singular[:2]]
        out: dict[str, Any] = {"layer": layer, "explained_variance_ratio": explained, "coords": {}}
        offset = 0
        for n in names:
            rows = self.states[n].shape[0]
            out["coords"][n] = coords[offset : offset + rows].tolist()
            offset += rows
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "conditions": list(self.states),
            "samples": int(next(iter(self.states.values())).shape[0]),
            "distance_to_query_only": self.distances(),
            "pca": [self.pca(layer) for layer in self.pca_layers],
        }


def five_conditions(
    vlm: VLM,
    records: Sequence[GapRecord],
    layers: Layers = "all",
    pca_layers: Sequence[int] | None = None,
    batch_size: int = 8,
    system: str | None = None,
    noise_seed: int = 0,
) -> FiveConditions:
    """CMRM's five input conditions. The blank image is white, the noise image uniform RGB seeded
    per sample (``noise_seed + i``), both at the original image's size. The caption condition is
    left out when some record has no caption."""
    wanted = resolve_layers(layers, vlm.adapter.num_layers)
    _require(records, "image")
    prompts = [r.prompt for r in records]
    originals = [r.load_image() for r in records]
    sizes = [img.size for img in originals if img is not None]
    inputs: dict[str, tuple[list[str], list[Any] | None]] = {
        "original": (prompts, list(originals)),
        "blank_image": (prompts, [blank_image(size) for size in sizes]),
        "noise_image": (prompts, [noise_image(size, seed=noise_seed + i) for i, size in enumerate(sizes)]),
    }
    if all(r.caption for r in records):
        inputs["caption_text"] = ([caption_prompt(r.caption or "", r.prompt) for r in records], None)
    inputs["query_only"] = (prompts, None)
    states = {
        name: last_token_states(vlm, texts, images, wanted, batch_size, system)
        for name, (texts, images) in inputs.items()
    }
    chosen = (
        list(pca_layers)
        if pca_layers is not None
        else sorted({wanted[0], wanted[len(wanted) // 2], wanted[-1]})
    )
    for layer in chosen:
        if layer not in wanted:
            raise ValueError(f"PCA layer {layer} is not among the measured layers")
    return FiveConditions(wanted, states, chosen)
