"""Modality-gap metrics: Fréchet distance and MIR, centroid gap, matched-pair gaps (L2I, RMG) and
linear-probe separability.

Conventions (see docs/diagnostics.md for sources): MIR follows the official code of Huang et al.
(text-centric scaling by the mean text-token norm, 3-sigma outlier replacement by the
coordinate-wise median token, Fréchet distance with unbiased covariances, log10 of the sum over
layers). The ``*_direct`` functions keep every token in memory and exist as the reference the
streaming path is tested against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch


def _drop_rounding(eigenvalues: torch.Tensor) -> torch.Tensor:
    """Eigenvalues with rounding noise zeroed: below ``n * eps * max|eigenvalue|`` they are
    indistinguishable from zero, and a square root would blow ``1e-17`` up to ``3e-9``."""
    tolerance = (
        eigenvalues.numel() * torch.finfo(eigenvalues.dtype).eps * eigenvalues.abs().max().clamp(min=0)
    )
    return torch.where(eigenvalues > tolerance, eigenvalues, torch.zeros_like(eigenvalues))


def psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix via ``eigh``.

    Eigenvalues at rounding level or below zero (rank-deficient covariances) count as zero.
    """
    sym = (matrix + matrix.T) / 2
    eigenvalues, eigenvectors = torch.linalg.eigh(sym)
    root = _drop_rounding(eigenvalues).sqrt()
    return (eigenvectors * root) @ eigenvectors.T


def trace_sqrt_product(cov_a: torch.Tensor, cov_b: torch.Tensor) -> float:
    """``tr((A B)^(1/2))`` for symmetric PSD ``A``, ``B``.

    ``A B`` is similar to the symmetric PSD ``A^(1/2) B A^(1/2)``, so the trace of its principal
    square root is the sum of the square roots of that matrix's (clamped) eigenvalues. Unlike
    ``scipy.linalg.sqrtm`` of the non-symmetric product, this stays stable when either covariance
    is rank-deficient (fewer tokens than dimensions).
    """
    a = cov_a.to(torch.float64)
    b = cov_b.to(torch.float64)
    root_a = psd_sqrt(a)
    middle = root_a @ b @ root_a
    eigenvalues = torch.linalg.eigvalsh((middle + middle.T) / 2)
    return float(_drop_rounding(eigenvalues).sqrt().sum())


@dataclass(frozen=True)
class FrechetTerms:
    """``total = mean_term + trace_a + trace_b - 2 * cross``."""

    mean_term: float
    trace_a: float
    trace_b: float
    cross: float

    @property
    def total(self) -> float:
        return self.mean_term + self.trace_a + self.trace_b - 2 * self.cross

    def scaled(self, factor: float) -> FrechetTerms:
        """Every term multiplied by ``factor`` (the FD of data scaled by ``sqrt(factor)``)."""
        return FrechetTerms(*(factor * v for v in (self.mean_term, self.trace_a, self.trace_b, self.cross)))


def frechet_terms(
    mean_a: torch.Tensor, cov_a: torch.Tensor, mean_b: torch.Tensor, cov_b: torch.Tensor
) -> FrechetTerms:
    """Fréchet distance between Gaussians, split into its terms (float64)."""
    diff = mean_a.to(torch.float64) - mean_b.to(torch.float64)
    return FrechetTerms(
        mean_term=float(diff @ diff),
        trace_a=float(torch.trace(cov_a.to(torch.float64))),
        trace_b=float(torch.trace(cov_b.to(torch.float64))),
        cross=trace_sqrt_product(cov_a, cov_b),
    )


def frechet_distance(
    mean_a: torch.Tensor, cov_a: torch.Tensor, mean_b: torch.Tensor, cov_b: torch.Tensor
) -> float:
    """``||mu_a - mu_b||^2 + tr(A) + tr(B) - 2 tr((A B)^(1/2))``; symmetric in its two Gaussians."""
    return frechet_terms(mean_a, cov_a, mean_b, cov_b).total


def reference_fast_terms(
    mean_a: torch.Tensor, cov_a: torch.Tensor, mean_b: torch.Tensor, cov_b: torch.Tensor
) -> FrechetTerms:
    """What the official MIR "fast" mode computes (its default).

    Its 5-step coupled Newton-Schulz iteration starts at its own fixed point and returns ``A B``
    itself, not ``(A B)^(1/2)`` (perf-anchors.md section 2.1), so its cross term is
    ``tr(A B) = sum_ij A_ij B_ij``. Reported beside the true Fréchet distance for comparison with
    published MIR numbers; it is not a distance.
    """
    diff = mean_a.to(torch.float64) - mean_b.to(torch.float64)
    a = cov_a.to(torch.float64)
    b = cov_b.to(torch.float64)
    return FrechetTerms(
        float(diff @ diff), float(torch.trace(a)), float(torch.trace(b)), float((a * b).sum())
    )


def mir_total(per_layer_fd: Sequence[float]) -> float:
    """``log10`` of the summed per-layer distances (NaN when the sum is not positive)."""
    total = float(sum(per_layer_fd))
    return math.log10(total) if total > 0 else math.nan


# -- direct (all tokens in memory) reference ------------------------------------------------------
def replace_outliers_direct(tokens: torch.Tensor) -> tuple[torch.Tensor, int]:
    """MIR's 3-sigma rule on one modality: rows whose L2 norm is more than 3 standard deviations
    (unbiased) from the median norm become the coordinate-wise (lower) median row. Returns the
    cleaned copy and the number of rows replaced."""
    norms = tokens.norm(dim=-1)
    median_norm = norms.median()
    std = norms.std() if norms.numel() > 1 else torch.tensor(math.nan, dtype=norms.dtype)
    outliers = (norms - median_norm).abs() > 3 * std
    cleaned = tokens.clone()
    cleaned[outliers] = tokens.median(dim=0).values
    return cleaned, int(outliers.sum())


def mir_layer_direct(
    image: torch.Tensor, text: torch.Tensor, outliers: bool = True, cross: str = "eigh"
) -> FrechetTerms:
    """One layer of MIR from stored tokens (float64): text-centric scaling, outlier replacement,
    Fréchet distance. ``cross`` picks how ``tr((A B)^(1/2))`` is computed: ``"eigh"`` (as the
    streaming path), ``"svd"`` (nuclear norm of the scaled cross-product of the centred token
    matrices, an independent route exact for rank-deficient covariances) or ``"scipy"``
    (``scipy.linalg.sqrtm`` of the product, as the official "accurate" mode)."""
    image = image.to(torch.float64)
    text = text.to(torch.float64)
    scale = 1.0 / float(text.norm(dim=-1).mean())
    image, text = image * scale, text * scale
    if outliers:
        image, _ = replace_outliers_direct(image)
        text, _ = replace_outliers_direct(text)
    mean_i, mean_t = image.mean(dim=0), text.mean(dim=0)
    cov_i = torch.cov(image.T).reshape(image.shape[1], image.shape[1])
    cov_t = torch.cov(text.T).reshape(text.shape[1], text.shape[1])
    diff = mean_i - mean_t
    if cross == "eigh":
        cross_value = trace_sqrt_product(cov_i, cov_t)
    elif cross == "svd":
        a = (image - mean_i) / math.sqrt(image.shape[0] - 1)
        b = (text - mean_t) / math.sqrt(text.shape[0] - 1)
        cross_value = float(torch.linalg.svdvals(a @ b.T).sum())
    elif cross == "scipy":
        import numpy as np
        from scipy.linalg import sqrtm

        root = sqrtm(cov_i.numpy() @ cov_t.numpy())
        cross_value = float(np.trace(np.real(root)))
    else:
        raise ValueError(f"cross must be 'eigh', 'svd' or 'scipy', got {cross!r}")
    return FrechetTerms(float(diff @ diff), float(torch.trace(cov_i)), float(torch.trace(cov_t)), cross_value)


def mir_direct(
    image_layers: Sequence[torch.Tensor],
    text_layers: Sequence[torch.Tensor],
    outliers: bool = True,
    cross: str = "eigh",
) -> tuple[list[float], float]:
    """Per-layer distances and MIR from per-layer token matrices kept in memory."""
    per_layer = [
        mir_layer_direct(i, t, outliers, cross).total for i, t in zip(image_layers, text_layers, strict=True)
    ]
    return per_layer, mir_total(per_layer)


# -- centroid and paired gaps ---------------------------------------------------------------------
def unit_rows(rows: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    rows = rows.to(torch.float64)
    return rows / rows.norm(dim=-1, keepdim=True).clamp(min=1e-300)


def centroid_gap(a: torch.Tensor, b: torch.Tensor, norm: str = "l2") -> float:
    """Distance between the two modality centroids (Liang et al.'s gap with ``norm="l2"``:
    rows are L2-normalised first). ``"text_centric"`` scales both sets by the mean norm of ``b``
    (MIR's scaling), ``"none"`` uses the raw rows."""
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    if norm == "l2":
        return float((unit_rows(a64).mean(0) - unit_rows(b64).mean(0)).norm())
    if norm == "text_centric":
        return float((a64.mean(0) - b64.mean(0)).norm() / b64.norm(dim=-1).mean())
    if norm == "none":
        return float((a64.mean(0) - b64.mean(0)).norm())
    raise ValueError(f"norm must be 'l2', 'text_centric' or 'none', got {norm!r}")


def mean_pairwise_cosine(unit_sum: torch.Tensor, count: int) -> float:
    """Mean cosine over all distinct pairs of unit rows, from their sum: ``(|sum|^2 - n) / (n (n-1))``."""
    if count < 2:
        return math.nan
    return float((unit_sum @ unit_sum - count) / (count * (count - 1)))


@dataclass(frozen=True)
class PairedGap:
    """Gaps between matched rows ``a[i] <-> b[i]`` (e.g. an image's pooled state and its caption's).

    ``l2i``: mean ``||a_i - b_i||`` of L2-normalised rows (Schrodi et al.'s instance-wise L2).
    ``rmg``: Schrodi et al.'s relative modality gap, ``D_match / (D_match + (D_a + D_b) / 2)`` with
    ``d(x, y) = 1 - (cos + 1) / 2``, a non-positive ``D_match`` set to 1e-3, ``D_a``/``D_b`` over distinct pairs.
    """

    l2i: float
    rmg: float
    matched_cosine: float
    intra_cosine_a: float
    intra_cosine_b: float
    pairs: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def paired_gap(a: torch.Tensor, b: torch.Tensor) -> PairedGap:
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"matched rows need equal 2-D shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    ua, ub = unit_rows(a), unit_rows(b)
    n = a.shape[0]
    matched = float((ua * ub).sum(dim=1).mean())
    intra_a = mean_pairwise_cosine(ua.sum(0), n)
    intra_b = mean_pairwise_cosine(ub.sum(0), n)
    raw_match = 1 - (matched + 1) / 2
    d_match = raw_match if raw_match > 0 else 1e-3  # Schrodi et al. replace non-positive values by 1e-3
    d_a, d_b = 1 - (intra_a + 1) / 2, 1 - (intra_b + 1) / 2
    rmg = d_match / (d_match + (d_a + d_b) / 2) if n >= 2 else math.nan
    return PairedGap(
        l2i=float((ua - ub).norm(dim=1).mean()),
        rmg=rmg,
        matched_cosine=matched,
        intra_cosine_a=intra_a,
        intra_cosine_b=intra_b,
        pairs=n,
    )


# -- linear probe ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProbeResult:
    """Held-out accuracy of a logistic-regression probe telling the two token sets apart.

    The split is by group (sample), so tokens of one sample never sit on both sides.
    ``chance`` is the majority-class share of the test set; ``balanced_accuracy`` averages the
    per-class recalls (image tokens usually outnumber text tokens).
    """

    accuracy: float
    balanced_accuracy: float
    chance: float
    train_accuracy: float
    n_train: int
    n_test: int
    split: str

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def _group_split(groups: torch.Tensor, test_fraction: float, seed: int) -> tuple[torch.Tensor, str]:
    unique = torch.unique(groups)
    if unique.numel() >= 2:
        generator = torch.Generator().manual_seed(seed)
        order = unique[torch.randperm(unique.numel(), generator=generator)]
        n_test = max(1, round(test_fraction * unique.numel()))
        return torch.isin(groups, order[:n_test]), "by_sample"
    generator = torch.Generator().manual_seed(seed)
    test = torch.rand(groups.numel(), generator=generator) < test_fraction
    return test, "by_token"


def linear_probe(
    a: torch.Tensor,
    b: torch.Tensor,
    groups_a: torch.Tensor | None = None,
    groups_b: torch.Tensor | None = None,
    test_fraction: float = 0.25,
    l2: float = 1e-3,
    seed: int = 0,
    max_iter: int = 200,
) -> ProbeResult:
    """Train a class-balanced, L2-regularised logistic regression (LBFGS, standardised features)
    to tell ``a`` rows (label 1) from ``b`` rows (label 0); report held-out accuracy.

    Groups (sample ids) keep a sample's tokens on one side of the split; without groups, or with
    a single group, the split is per token and says so in ``split``.
    """
    if a.shape[0] == 0 or b.shape[0] == 0:
        raise ValueError("the linear probe needs tokens of both kinds")
    x = torch.cat([a, b]).to(torch.float64)
    y = torch.cat([torch.ones(a.shape[0]), torch.zeros(b.shape[0])]).to(torch.float64)
    ga = groups_a if groups_a is not None else torch.zeros(a.shape[0], dtype=torch.int64)
    gb = groups_b if groups_b is not None else torch.zeros(b.shape[0], dtype=torch.int64)
    test, split = _group_split(
        torch.cat([ga.reshape(-1), gb.reshape(-1)]).to(torch.int64), test_fraction, seed
    )
    train = ~test
    if not bool(test.any()) or not bool(train.any()):
        raise ValueError("the probe split left an empty train or test set; give it more samples")
    mean = x[train].mean(0)
    std = x[train].std(0, unbiased=False).clamp(min=1e-12)
    z = (x - mean) / std
    positives = float(y[train].sum())
    negatives = float(train.sum()) - positives
    weight = torch.where(y == 1, 0.5 / max(positives, 1.0), 0.5 / max(negatives, 1.0))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, bias], max_iter=max_iter, line_search_fn="strong_wolfe")
    zt, yt, wt = z[train], y[train], weight[train]

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = (
            wt * torch.nn.functional.binary_cross_entropy_with_logits(zt @ w + bias, yt, reduction="none")
        ).sum()
        loss = loss + l2 * (w @ w)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        predicted = (z @ w + bias) > 0
    truth = y.bool()

    def accuracy(mask: torch.Tensor) -> float:
        return float((predicted[mask] == truth[mask]).double().mean())

    recalls = [accuracy(test & truth), accuracy(test & ~truth)]
    recalls = [
        r
        for r, present in zip(recalls, [bool((test & truth).any()), bool((test & ~truth).any())], strict=True)
        if present
    ]
    share = float(truth[test].double().mean())
    return ProbeResult(
        accuracy=accuracy(test),
        balanced_accuracy=sum(recalls) / len(recalls),
        chance=max(share, 1 - share),
        train_accuracy=accuracy(train),
        n_train=int(train.sum()),
        n_test=int(test.sum()),
        split=split,
    )
