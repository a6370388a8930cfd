"""Calibration: estimate CMRM's dataset-level shift from anchors, streaming and batched.

For each anchor ``(text, image)`` the model reads the text-only prompt (same chat template, no
image placeholder) and the same text with a corrupted image; the per-layer difference
``d_i = h_text - h_corrupted`` at the read position is added to float64 running sums (and, for
PCA, to a running ``d x d`` second moment), so memory does not grow with the number of anchors.
With ``diagnostics=True`` the original image is read too and per-layer distances are recorded.

Estimators (``docs/cmrm.md``): ``mean`` (default) is ``mean_i d_i``. ``pca`` is the first
eigenvector of the uncentred second moment ``E[d d^T]``, oriented to agree with the mean and scaled
by the mean projection ``u . mean``; ``pca_centered`` does the same with the covariance
``E[d d^T] - mean mean^T`` (classic PCA, which discards the common shift and keeps only its
variation, so it is usually much shorter).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, cast

import torch
from PIL import Image

import safegap
from safegap.models.loading import VLM
from safegap.probe.record import Positions, record
from safegap.specs import Layers, resolve_layers
from safegap.steer.anchors import (
    Anchor,
    CorruptionKind,
    anchors_hash,
    corrupted_image,
    corruption_record,
    validate_anchors,
)
from safegap.steer.prefix import shared_prefix_states
from safegap.steer.vector import Provenance, ShiftVector

Estimator = Literal["mean", "pca", "pca_centered"]
ESTIMATORS: tuple[str, ...] = ("mean", "pca", "pca_centered")


# -- reading states ----------------------------------------------------------------------------
def _position_mask(vlm: VLM, batch: dict[str, torch.Tensor], position: str) -> torch.Tensor | None:
    """Bool ``(B, T)`` mask for a read position, ``None`` for ``last``."""
    if position == "last":
        return None
    valid = batch["attention_mask"].bool()
    if position == "text":
        return valid & ~vlm.adapter.image_token_mask(batch["input_ids"])
    if position.startswith("last:"):
        try:
            k = int(position.split(":", 1)[1])
        except ValueError:
            k = 0
        if k < 1:
            raise ValueError(f"position {position!r}: K in last:K must be a positive integer")
        from_end = valid.flip(1).long().cumsum(1).flip(1)
        return valid & (from_end <= k)
    raise ValueError(f"unknown read position {position!r}; use 'last', 'last:K' or 'text'")


def check_position(position: str) -> str:
    if position in ("last", "text"):
        return position
    if position.startswith("last:") and position[5:].isdigit() and int(position[5:]) >= 1:
        return position
    raise ValueError(f"unknown read position {position!r}; use 'last', 'last:K' (K >= 1) or 'text'")


def record_states(
    vlm: VLM,
    batch: dict[str, torch.Tensor],
    layers: list[int],
    positions: str | torch.Tensor = "last",
    dtype: torch.dtype | None = torch.float64,
) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
    """:func:`safegap.probe.record` for ``layers``, robust to layers the model skips.

    Some families skip layers for some inputs (Mllama's cross-attention layers do not run on a
    text-only prompt); a skipped layer is the identity, so its state is the previous layer's.
    Returns ``(states, row_index)``.
    """
    deepest = max(layers)
    where = cast(Positions, positions)
    rec = record(vlm, batch, list(range(deepest + 1)), where, dtype=dtype)
    states: dict[int, torch.Tensor] = {}
    for i in range(deepest + 1):
        if i in rec.states:
            states[i] = rec.states[i]
        elif i == 0:
            raise RuntimeError("decoder layer 0 did not run; cannot read its state")
        else:
            states[i] = states[i - 1]
    return {i: states[i] for i in layers}, rec.row_index


def read_states(
    vlm: VLM,
    texts: Sequence[str],
    images: Sequence[Image.Image | None] | None,
    layers: list[int],
    position: str = "last",
    system: str | None = None,
) -> dict[int, torch.Tensor]:
    """``{layer: (B, d) float64}``: decoder-layer outputs at ``position`` (mean over a token set)."""
    has_image = images is not None and any(img is not None for img in images)
    batch = vlm.build_inputs(list(texts), list(images) if has_image and images is not None else None, system)
    mask = _position_mask(vlm, batch, position)
    if mask is None:
        return record_states(vlm, batch, layers, "last")[0]
    states, row_index = record_states(vlm, batch, layers, mask)
    assert row_index is not None
    counts = torch.bincount(row_index, minlength=len(texts)).to(torch.float64)
    if bool((counts == 0).any()):
        raise ValueError(f"read position {position!r} selects no token in some row")
    out = {}
    for i, flat in states.items():
        sums = torch.zeros(len(texts), flat.shape[1], dtype=torch.float64).index_add_(0, row_index, flat)
        out[i] = sums / counts[:, None]
    return out


# -- streaming statistics ----------------------------------------------------------------------
class DiffAccumulator:
    """Running float64 sums of per-layer difference vectors (and optionally ``sum d d^T``)."""

    def __init__(self, layers: Sequence[int], hidden: int, second_moment: bool = False) -> None:
        self.layers = list(layers)
        self.n = 0
        self.total = {i: torch.zeros(hidden, dtype=torch.float64) for i in self.layers}
        self.sq_norm = {i: 0.0 for i in self.layers}
        self.moment = (
            {i: torch.zeros(hidden, hidden, dtype=torch.float64) for i in self.layers}
            if second_moment
            else None
        )

    def add(self, diffs: dict[int, torch.Tensor]) -> None:
        rows = None
        for i in self.layers:
            d = diffs[i].to(torch.float64)
            rows = d.shape[0]
            self.total[i] += d.sum(0)
            self.sq_norm[i] += float((d * d).sum())
            if self.moment is not None:
                self.moment[i].addmm_(d.T, d)
        self.n += rows or 0

    def mean(self, layer: int) -> torch.Tensor:
        return self.total[layer] / max(self.n, 1)

    def estimate(self, estimator: str) -> tuple[dict[int, torch.Tensor], dict[str, list[float]]]:
        """Per-layer vectors (float32) and estimator facts (``pc1_fraction`` for PCA)."""
        if self.n == 0:
            raise ValueError("no anchors were accumulated")
        vectors: dict[int, torch.Tensor] = {}
        facts: dict[str, list[float]] = {}
        for i in self.layers:
            mu = self.mean(i)
            if estimator == "mean":
                vectors[i] = mu.float()
                continue
            if self.moment is None:
                raise ValueError(
                    f"estimator {estimator!r} needs the second moment; build with second_moment=True"
                )
            m2 = self.moment[i] / self.n
            if estimator == "pca_centered":
                m2 = m2 - torch.outer(mu, mu)
            elif estimator != "pca":
                raise ValueError(f"unknown estimator {estimator!r}; use {', '.join(ESTIMATORS)}")
            evals, evecs = torch.linalg.eigh(m2)
            u = evecs[:, -1]
            proj = float(u @ mu)
            if proj < 0:
                u, proj = -u, -proj
            vectors[i] = (proj * u).float()
            trace = float(evals.clamp_min(0).sum())
            facts.setdefault("pc1_fraction", []).append(float(evals[-1]) / trace if trace > 0 else 0.0)
        return vectors, facts


class _Diagnostics:
    """Per-layer distances between text-only (t), corrupted (c) and original (o) states."""

    def __init__(self, layers: Sequence[int], hidden: int) -> None:
        self.layers = list(layers)
        self.n = 0
        self.tc = {i: 0.0 for i in layers}
        self.to = {i: 0.0 for i in layers}
        self.oc = {i: 0.0 for i in layers}
        self.shift_o = {i: torch.zeros(hidden, dtype=torch.float64) for i in layers}
        self.shift_c = {i: torch.zeros(hidden, dtype=torch.float64) for i in layers}

    def add(self, t: dict[int, torch.Tensor], c: dict[int, torch.Tensor], o: dict[int, torch.Tensor]) -> None:
        for i in self.layers:
            self.tc[i] += float((t[i] - c[i]).norm(dim=1).sum())
            self.to[i] += float((t[i] - o[i]).norm(dim=1).sum())
            self.oc[i] += float((o[i] - c[i]).norm(dim=1).sum())
            self.shift_o[i] += (t[i] - o[i]).sum(0)
            self.shift_c[i] += (t[i] - c[i]).sum(0)
        self.n += next(iter(t.values())).shape[0]

    def summary(self) -> dict[str, list[float]]:
        if self.n == 0:
            return {}
        cos = []
        for i in self.layers:
            a, b = self.shift_o[i], self.shift_c[i]
            denom = float(a.norm() * b.norm())
            cos.append(float(a @ b) / denom if denom > 0 else 0.0)
        return {
            "mean_dist_text_corrupted_with_original": [self.tc[i] / self.n for i in self.layers],
            "mean_dist_text_original": [self.to[i] / self.n for i in self.layers],
            "mean_dist_original_corrupted": [self.oc[i] / self.n for i in self.layers],
            "cos_shift_original_vs_corrupted": cos,
        }


# -- calibration -------------------------------------------------------------------------------
def _batches(items: Sequence[Anchor], size: int) -> list[Sequence[Anchor]]:
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")
    return [items[s : s + size] for s in range(0, len(items), size)]


def calibrate(
    vlm: VLM,
    anchors: Sequence[Anchor] | Sequence[str],
    *,
    corrupt: CorruptionKind = "blank",
    estimator: Estimator = "mean",
    position: str = "last",
    layers: Layers = "all",
    batch_size: int = 8,
    system: str | None = None,
    noise_seed: int = 0,
    diagnostics: bool = True,
    source: str = "",
    progress: Callable[[int, int], None] | None = None,
    share_prefix: bool = True,
) -> ShiftVector:
    """Dataset-level CMRM shift ``mean(text-only - corrupted)`` (or a PCA variant) per layer.

    ``anchors`` are ``(text, image-or-None)`` pairs (bare strings mean no image). ``progress``
    is called as ``progress(done, total)`` after each batch. ``share_prefix`` runs the corrupted
    prompts' common head once per batch where they have one (blank images, ``position="last"``;
    :mod:`safegap.steer.prefix`); the result is the same up to float rounding.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; use {', '.join(ESTIMATORS)}")
    corruption = corruption_record(corrupt, noise_seed)
    position = check_position(position)
    items = validate_anchors(anchors)
    wanted = resolve_layers(layers, vlm.adapter.num_layers)
    hidden = vlm.adapter.hidden_size
    acc = DiffAccumulator(wanted, hidden, second_moment=estimator != "mean")
    diag = _Diagnostics(wanted, hidden)
    done = 0
    # Batches of similar text length waste less compute on padding; the sums do not depend on order.
    by_length = sorted(items, key=lambda item: len(item[0]))
    for chunk in _batches(by_length, batch_size):
        texts = [t for t, _ in chunk]
        corrupted_imgs = [corrupted_image(corrupt, img, t, noise_seed) for t, img in chunk]
        with_original = [k for k, (_, img) in enumerate(chunk) if img is not None] if diagnostics else []
        originals: list[Image.Image | None] = [chunk[k][1] for k in with_original]
        n = len(chunk)
        shared = None
        if share_prefix and position == "last" and n > 1:
            shared = shared_prefix_states(vlm, texts, corrupted_imgs, wanted, system)
        if shared is not None:
            text_only = {i: v.to(torch.float64).cpu() for i, v in shared[0].items()}
            corrupted_states = {i: v.to(torch.float64).cpu() for i, v in shared[1].items()}
            original_states = (
                read_states(vlm, [texts[k] for k in with_original], originals, wanted, position, system)
                if with_original
                else {}
            )
        else:
            text_only = read_states(vlm, texts, None, wanted, position, system)
            image_texts = texts + [texts[k] for k in with_original]
            image_rows: list[Image.Image | None] = [*corrupted_imgs, *originals]
            image_states = read_states(vlm, image_texts, image_rows, wanted, position, system)
            corrupted_states = {i: v[:n] for i, v in image_states.items()}
            original_states = {i: v[n:] for i, v in image_states.items()}
        acc.add({i: text_only[i] - corrupted_states[i] for i in wanted})
        if with_original:
            idx = torch.tensor(with_original)
            diag.add(
                {i: text_only[i][idx] for i in wanted},
                {i: corrupted_states[i][idx] for i in wanted},
                original_states,
            )
        done += n
        if progress is not None:
            progress(done, len(items))
    vectors, facts = acc.estimate(estimator)
    report = {**facts, **diag.summary()}
    report.update(_in_sample_fit(acc, vectors))
    digest, count = anchors_hash(items)
    provenance = Provenance(
        model=vlm.fingerprint(),
        anchors_hash=digest,
        anchors_size=count,
        anchors_source=source,
        corruption=corruption,
        position=position,
        estimator=estimator,
        safegap_version=safegap.__version__,
    )
    return ShiftVector(vectors, provenance, report)


def _in_sample_fit(acc: DiffAccumulator, vectors: dict[int, torch.Tensor]) -> dict[str, list[float]]:
    """RMS distance text-only vs corrupted before and after adding the vector, on the anchors
    themselves: ``E|d|^2`` and ``E|d - v|^2 = E|d|^2 - 2 v.mean + |v|^2`` from the running sums."""
    before, after = [], []
    for i in acc.layers:
        v = vectors[i].to(torch.float64)
        e_sq = acc.sq_norm[i] / acc.n
        before.append(math.sqrt(max(e_sq, 0.0)))
        after.append(math.sqrt(max(e_sq - 2 * float(v @ acc.mean(i)) + float(v @ v), 0.0)))
    return {
        "rms_gap_before": before,
        "rms_gap_after": after,
        "vector_norm": [float(vectors[i].norm()) for i in acc.layers],
    }


def calibrate_direction(
    vlm: VLM,
    positive: Sequence[Anchor] | Sequence[str],
    negative: Sequence[Anchor] | Sequence[str],
    *,
    position: str = "last",
    layers: Layers = "all",
    batch_size: int = 8,
    system: str | None = None,
    source: str = "",
) -> tuple[ShiftVector, ShiftVector]:
    """``(direction, reference)`` = ``(mean(positive) - mean(negative), mean(negative))`` per layer.

    With harmful prompts as ``positive`` and harmless ones as ``negative`` this is the safety
    (harm) direction used by the ``project`` and ``gated`` operators; ``reference`` is the benign
    centre the ``gated`` operator measures from.
    """
    position = check_position(position)
    wanted = resolve_layers(layers, vlm.adapter.num_layers)
    hidden = vlm.adapter.hidden_size
    means = []
    for group in (validate_anchors(positive), validate_anchors(negative)):
        acc = DiffAccumulator(wanted, hidden)
        for chunk in _batches(group, batch_size):
            images = [img for _, img in chunk]
            acc.add(read_states(vlm, [t for t, _ in chunk], images, wanted, position, system))
        means.append({i: acc.mean(i) for i in wanted})
    pos_hash, n_pos = anchors_hash(validate_anchors(positive))
    neg_hash, n_neg = anchors_hash(validate_anchors(negative))
    base = Provenance(
        model=vlm.fingerprint(),
        anchors_hash=f"{pos_hash[:32]}{neg_hash[:32]}",
        anchors_size=n_pos + n_neg,
        anchors_source=source,
        position=position,
        safegap_version=safegap.__version__,
    )
    direction = ShiftVector(
        {i: (means[0][i] - means[1][i]).float() for i in wanted},
        Provenance(
            **{
                **base.__dict__,
                "estimator": f"direction: mean of {n_pos} positive - mean of {n_neg} negative",
            }
        ),
    )
    reference = ShiftVector(
        {i: means[1][i].float() for i in wanted},
        Provenance(**{**base.__dict__, "estimator": f"reference: mean of {n_neg} negative"}),
    )
    return direction, reference


# -- checking the sign on held-out anchors ------------------------------------------------------
@dataclass
class GapClosure:
    """Mean per-layer distance to the text-only state: corrupted alone, corrupted + alpha * v
    (static: the vector added to recorded states) and, if measured, with steering hooks active
    through the whole stack (``propagated``)."""

    layers: list[int]
    before: list[float]
    after: list[float]
    propagated: list[float] = field(default_factory=list)

    def closed_fraction(self) -> list[float]:
        return [1 - a / b if b > 0 else 0.0 for a, b in zip(self.after, self.before, strict=True)]


def gap_closure(
    vlm: VLM,
    shift: ShiftVector,
    anchors: Sequence[Anchor] | Sequence[str],
    *,
    alpha: float = 1.0,
    corrupt: CorruptionKind | None = None,
    batch_size: int = 8,
    system: str | None = None,
    noise_seed: int = 0,
    propagated: bool = False,
) -> GapClosure:
    """How far ``shift`` moves corrupted states toward text-only ones on (held-out) ``anchors``."""
    shift.check_fits(vlm)
    kind = corrupt or shift.provenance.corruption.get("kind", "blank")
    position = shift.provenance.position or "last"
    wanted = shift.layers
    items = validate_anchors(anchors)
    sums = {"before": [0.0] * len(wanted), "after": [0.0] * len(wanted), "propagated": [0.0] * len(wanted)}
    for chunk in _batches(items, batch_size):
        texts = [t for t, _ in chunk]
        imgs: list[Image.Image | None] = [corrupted_image(kind, img, t, noise_seed) for t, img in chunk]
        t_states = read_states(vlm, texts, None, wanted, position, system)
        c_states = read_states(vlm, texts, imgs, wanted, position, system)
        p_states = None
        if propagated:
            with shift.apply(vlm, alpha=alpha, positions="last" if position == "last" else "prefill"):
                p_states = read_states(vlm, texts, imgs, wanted, position, system)
        for k, i in enumerate(wanted):
            v = shift.vectors[i].to(torch.float64).cpu()
            sums["before"][k] += float((c_states[i] - t_states[i]).norm(dim=1).sum())
            sums["after"][k] += float((c_states[i] + alpha * v - t_states[i]).norm(dim=1).sum())
            if p_states is not None:
                sums["propagated"][k] += float((p_states[i] - t_states[i]).norm(dim=1).sum())
    n = len(items)
    return GapClosure(
        wanted,
        [s / n for s in sums["before"]],
        [s / n for s in sums["after"]],
        [s / n for s in sums["propagated"]] if propagated else [],
    )
