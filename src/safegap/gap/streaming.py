"""Streaming, per-layer modality-gap computation with memory independent of the token count.

MIR's outlier step needs the median token norm (to find outliers) and the coordinate-wise median
token (to replace them). Both are exact here with bounded memory, at the price of reading the
token stream three times (see :mod:`safegap.gap.select`):

* pass 1: float64 moments (count, shifted sums, shifted second moments), norm mean and std,
  the L2-normalised row sum (centroid gap), first digits of the medians, probe sample;
* pass 2: second digits of the medians; the median norm is now exact, so the outlier rule
  ``|norm - median| > 3 std`` is fixed;
* pass 3: the outlier rows' contributions are subtracted from the moments, last digit of the
  coordinate-wise median; at the end, as many copies of the median row are added back.

MIR's text-centric scaling multiplies both modalities by one scalar, so the outlier rule is
unchanged by it and the scaled statistics are the raw ones times the scale (squared for
covariances); scaling is applied at the end. With ``outliers=False`` a single pass suffices.

That is ``mode="exact"``. The default ``mode="fast"`` (:mod:`safegap.gap.onepass`) reads the
stream once: the outlier set is still exact (all norms kept, extreme-norm rows buffered) and only
the replacement row's coordinate medians are interpolated from one-pass histograms; its GEMMs are
float32 summed into float64 unless ``gemm_dtype`` says otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from safegap.gap.metrics import (
    ProbeResult,
    frechet_terms,
    linear_probe,
    mir_total,
    reference_fast_terms,
)
from safegap.gap.moments import ModalitySummary, Moments, ScalarMoments, TokenReservoir
from safegap.gap.onepass import FastModalityStream
from safegap.gap.select import RadixSelect

#: Passes over the token stream needed for exact outlier replacement.
OUTLIER_PASSES = 3
#: ``"fast"``: one pass, interpolated replacement row; ``"exact"``: three passes, exact medians.
MODES = ("fast", "exact")


def resolve_gemm_dtype(mode: str, gemm_dtype: torch.dtype | None) -> torch.dtype:
    """The chunk GEMM's dtype: float32 (summed into float64) for the fast mode, else float64."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if gemm_dtype is not None:
        return gemm_dtype
    return torch.float32 if mode == "fast" else torch.float64


@dataclass
class TokenBatch:
    """Hidden states of one batch: per layer, the first token set (image) and the second (text),
    each ``(n_tokens, hidden)``, with the sample id of every token (for the probe's split)."""

    image: Mapping[int, torch.Tensor]
    text: Mapping[int, torch.Tensor]
    image_groups: torch.Tensor | None = None
    text_groups: torch.Tensor | None = None


#: A re-iterable source: each call starts the same stream of batches again.
TokenSource = Callable[[], Iterable[TokenBatch]]


class ModalityStream:
    """One modality at one layer."""

    def __init__(
        self,
        dim: int,
        outliers: bool = True,
        device: str | torch.device = "cpu",
        gemm_dtype: torch.dtype = torch.float64,
    ):
        self.dim = dim
        self.outliers = outliers
        self.device = torch.device(device)
        self.moments = Moments(dim, device, gemm_dtype)
        self.norms = ScalarMoments()
        self.unit_sum = torch.zeros(dim, dtype=torch.float64, device=self.device)
        self.pass_index = 0
        self.outlier_count = 0
        self.reproducible = True
        self._raw_mean: torch.Tensor | None = None
        self._norm_select = RadixSelect(1, (16, 16), self.device) if outliers else None
        self._coord_select = RadixSelect(dim, (11, 11, 10), self.device) if outliers else None
        self._median_norm: float | None = None
        self._pass_count = 0
        self._pass_norm_total = 0.0

    @property
    def passes(self) -> int:
        return OUTLIER_PASSES if self.outliers else 1

    def update(self, rows: torch.Tensor) -> None:
        rows = rows.reshape(-1, self.dim).to(self.device)
        if rows.shape[0] == 0:
            return
        if self.pass_index == 0 and not bool(torch.isfinite(rows).all()):
            raise ValueError("hidden states contain NaN or inf")
        norms = rows.to(torch.float64).norm(dim=-1)
        self._pass_count += rows.shape[0]
        self._pass_norm_total += float(norms.sum())
        if self.pass_index == 0:
            self.moments.update(rows)
            self.norms.update(norms)
            self.unit_sum += (rows.to(torch.float64) / norms.clamp(min=1e-300)[:, None]).sum(dim=0)
        if not self.outliers:
            return
        assert self._norm_select is not None and self._coord_select is not None
        if self.pass_index < 2:
            self._norm_select.update(norms.to(torch.float32))
        else:
            assert self._median_norm is not None
            flagged = (norms - self._median_norm).abs() > 3 * self.norms.std()
            if bool(flagged.any()):
                self.moments.remove(rows[flagged])
                self.outlier_count += int(flagged.sum())
        self._coord_select.update(rows)

    def end_pass(self) -> None:
        if self.pass_index >= self.passes:
            raise RuntimeError("all passes already done")
        if self.pass_index == 0:
            if self.moments.count == 0:
                raise ValueError("no tokens were seen")
            self._raw_mean = self.moments.mean().clone()
        else:
            if self._pass_count != self.norms.count:
                raise ValueError(
                    f"pass {self.pass_index + 1} saw {self._pass_count} tokens, pass 1 saw "
                    f"{self.norms.count}; the token source must repeat the same stream"
                )
            if not math.isclose(self._pass_norm_total, self.norms.total, rel_tol=1e-9, abs_tol=1e-12):
                self.reproducible = False
        if self.outliers:
            assert self._norm_select is not None and self._coord_select is not None
            if self.pass_index < 2:
                self._norm_select.end_pass()
                if self._norm_select.done:
                    self._median_norm = float(self._norm_select.values()[0])
            self._coord_select.end_pass()
        self.pass_index += 1
        self._pass_count = 0
        self._pass_norm_total = 0.0

    def summary(self) -> ModalitySummary:
        if self.pass_index < self.passes:
            raise RuntimeError(f"{self.passes - self.pass_index} pass(es) left before the summary")
        assert self._raw_mean is not None
        replacement = None
        if self.outliers and self.outlier_count:
            assert self._coord_select is not None
            replacement = self._coord_select.values()
        selects_consistent = all(
            s.consistent for s in (self._norm_select, self._coord_select) if s is not None
        )
        self.reproducible = self.reproducible and selects_consistent
        return ModalitySummary.of(
            self.moments,
            self.norms,
            self._raw_mean,
            self._median_norm,
            self.outlier_count,
            replacement,
            self.unit_sum,
        )


@dataclass
class LayerGap:
    """All gap numbers of one decoder layer. FD terms are on text-centrically scaled states."""

    layer: int
    fd: float
    fd_reference_fast: float
    mean_term: float
    trace_image: float
    trace_text: float
    cross_term: float
    scale: float
    centroid_l2: float
    centroid_text_centric: float
    centroid_raw: float
    intra_cosine_image: float
    intra_cosine_text: float
    image_tokens: int
    text_tokens: int
    image_outliers: int
    text_outliers: int
    mean_norm_image: float
    mean_norm_text: float


@dataclass
class GapResult:
    layers: list[LayerGap]
    mir: float
    mir_reference_fast: float
    outliers: bool
    passes: int
    reproducible: bool
    probe_layer: int | None = None
    probe: ProbeResult | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    mode: str = "exact"

    def per_layer(self, name: str) -> list[float]:
        return [float(getattr(layer, name)) for layer in self.layers]

    def as_dict(self) -> dict[str, Any]:
        return {
            "mir": {
                "total": self.mir,
                "total_reference_fast": self.mir_reference_fast,
                "outlier_replacement": self.outliers,
                "passes": self.passes,
                "mode": self.mode,
                "reproducible_source": self.reproducible,
            },
            "per_layer": [vars(layer).copy() for layer in self.layers],
            "probe": None if self.probe is None else {"layer": self.probe_layer, **self.probe.as_dict()},
            **self.extra,
        }


class GapAccumulator:
    """Per-layer image and text streams; feed every pass with :meth:`update`, close it with
    :meth:`end_pass`, then read :meth:`result`.

    ``probe_layer`` keeps a bounded random sample (``probe_capacity`` tokens per modality) of
    that layer's states for the linear probe. ``mode`` is ``"fast"`` (one pass, two when a
    buffer overflows) or ``"exact"`` (three passes with outliers); see the module docstring.
    """

    def __init__(
        self,
        layers: Sequence[int],
        dim: int,
        outliers: bool = True,
        probe_layer: int | None = None,
        probe_capacity: int = 4096,
        seed: int = 0,
        device: str | torch.device = "cpu",
        gemm_dtype: torch.dtype | None = None,
        mode: str = "fast",
    ):
        if not layers:
            raise ValueError("no layers given")
        gemm = resolve_gemm_dtype(mode, gemm_dtype)
        if probe_layer is not None and probe_layer not in layers:
            raise ValueError(f"probe layer {probe_layer} is not among the measured layers {list(layers)}")
        self.layers = list(layers)
        self.dim = dim
        self.outliers = outliers
        self.mode = mode
        stream = FastModalityStream if mode == "fast" else ModalityStream
        self.image = {i: stream(dim, outliers, device, gemm) for i in self.layers}
        self.text = {i: stream(dim, outliers, device, gemm) for i in self.layers}
        self.probe_layer = probe_layer
        self._probe = (
            (TokenReservoir(probe_capacity, dim, seed), TokenReservoir(probe_capacity, dim, seed + 1))
            if probe_layer is not None
            else None
        )
        self.pass_index = 0

    @property
    def passes(self) -> int:
        """Passes needed; in the fast mode it may turn from 1 to 2 after the first pass."""
        return max(s.passes for s in (*self.image.values(), *self.text.values()))

    @property
    def done(self) -> bool:
        return self.pass_index >= self.passes

    def update(self, batch: TokenBatch) -> None:
        for layer in self.layers:
            if layer not in batch.image or layer not in batch.text:
                raise KeyError(f"batch lacks layer {layer}")
            for stream, rows in (
                (self.image[layer], batch.image[layer]),
                (self.text[layer], batch.text[layer]),
            ):
                if stream.pass_index < stream.passes:
                    stream.update(rows)
        if self._probe is not None and self.pass_index == 0:
            assert self.probe_layer is not None
            for reservoir, states, groups in (
                (self._probe[0], batch.image, batch.image_groups),
                (self._probe[1], batch.text, batch.text_groups),
            ):
                rows = states[self.probe_layer]
                ids = groups if groups is not None else torch.zeros(rows.shape[0], dtype=torch.int64)
                reservoir.update(rows, ids)

    def end_pass(self) -> None:
        for stream in (*self.image.values(), *self.text.values()):
            if stream.pass_index < stream.passes:
                stream.end_pass()
        self.pass_index += 1

    def result(self, probe_seed: int = 0) -> GapResult:
        if not self.done:
            raise RuntimeError(f"{self.passes - self.pass_index} pass(es) left before the result")
        rows = [self._layer_gap(layer) for layer in self.layers]
        probe = None
        if self._probe is not None:
            image, text = self._probe
            probe = linear_probe(image.rows, text.rows, image.groups, text.groups, seed=probe_seed)
        reproducible = all(s.reproducible for s in (*self.image.values(), *self.text.values()))
        return GapResult(
            layers=rows,
            mir=mir_total([r.fd for r in rows]),
            mir_reference_fast=mir_total([r.fd_reference_fast for r in rows]),
            outliers=self.outliers,
            passes=self.passes,
            reproducible=reproducible,
            probe_layer=self.probe_layer,
            probe=probe,
            mode=self.mode,
        )

    def _layer_gap(self, layer: int) -> LayerGap:
        image = self.image[layer].summary()
        text = self.text[layer].summary()
        scale = 1.0 / text.mean_norm if text.mean_norm > 0 else math.nan
        means = (image.mean * scale, text.mean * scale)
        covs = (image.cov * scale**2, text.cov * scale**2)
        terms = frechet_terms(means[0], covs[0], means[1], covs[1])
        fast = reference_fast_terms(means[0], covs[0], means[1], covs[1])
        raw_gap = float((image.raw_mean - text.raw_mean).norm())
        return LayerGap(
            layer=layer,
            fd=terms.total,
            fd_reference_fast=fast.total,
            mean_term=terms.mean_term,
            trace_image=terms.trace_a,
            trace_text=terms.trace_b,
            cross_term=terms.cross,
            scale=scale,
            centroid_l2=float((image.unit_mean - text.unit_mean).norm()),
            centroid_text_centric=raw_gap * scale,
            centroid_raw=raw_gap,
            intra_cosine_image=image.intra_cosine,
            intra_cosine_text=text.intra_cosine,
            image_tokens=image.count,
            text_tokens=text.count,
            image_outliers=image.outliers,
            text_outliers=text.outliers,
            mean_norm_image=image.mean_norm,
            mean_norm_text=text.mean_norm,
        )


def stream_gap(
    source: TokenSource,
    layers: Sequence[int],
    dim: int,
    outliers: bool = True,
    probe_layer: int | None = None,
    probe_capacity: int = 4096,
    seed: int = 0,
    device: str | torch.device = "cpu",
    gemm_dtype: torch.dtype | None = None,
    mode: str = "fast",
) -> GapResult:
    """Run every pass over ``source`` (called once per pass) and return the per-layer gaps."""
    accumulator = GapAccumulator(
        layers, dim, outliers, probe_layer, probe_capacity, seed, device, gemm_dtype, mode
    )
    while not accumulator.done:
        for batch in source():
            accumulator.update(batch)
        accumulator.end_pass()
    return accumulator.result(probe_seed=seed)
