"""TGA's in-batch caption ranking: the captions of the *other* rows of a batch as negatives.

The paper's ranking term, ``softplus(cos(R, C) − cos(I, C))``, asks the image to be closer to
its caption than a *retrieved text* is. Without a retrieval corpus, the other rows' captions take
the retrieved text's place. For image row ``i`` at layer ``j``, with ``N_i`` the rows of the
same batch (same process) whose caption text differs from row ``i``'s::

    rank_i^j = mean_{k ∈ N_i}  τ · softplus((cos(I_i^j, C_k^j) − cos(I_i^j, C_i^j) + m) / τ)

``τ = 1, m = 0`` (the defaults) is the paper's softplus form exactly; a smaller ``τ`` tends to
the hinge ``max(0, cos_neg − cos_pos + m)`` (slope up to 1 instead of about 0.5). Captions are
compared by their own token ids (template and padding excluded), so duplicate captions are never
negatives of each other. Rows with no negative contribute 0. Only ``I`` carries a gradient: the
caption states are the no-grad targets of the caption pass.

:class:`InBatchRanking` is what :class:`~safegap.train.tga.TGALoss` uses with
``negatives="batch"``; :func:`ranking_per_row` is the differentiable core.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from safegap.train.distributed import global_sum_detached

Negatives = Literal["none", "batch"]
NEGATIVES: tuple[str, ...] = ("none", "batch")

#: Order of the detached sums kept for logging (pooled over layers, then over processes).
_STATS = ("rank", "cos_neg", "pairs", "gap", "correct", "ranked")


def caption_groups(batch: Mapping[str, Any], rows: torch.Tensor) -> torch.Tensor:
    """``(len(rows),)`` ids, equal exactly where two rows' caption tokens are equal."""
    ids = batch["caption_input_ids"][rows].cpu()
    own = (batch["caption_token_mask"][rows].bool() & batch["caption_attention_mask"][rows].bool()).cpu()
    seen: dict[tuple[int, ...], int] = {}
    groups = [seen.setdefault(tuple(r[m].tolist()), len(seen)) for r, m in zip(ids, own, strict=True)]
    return torch.tensor(groups, dtype=torch.long)


def negative_mask(groups: torch.Tensor) -> torch.Tensor:
    """``(R, R)`` bool: ``[i, k]`` where row ``k``'s caption is a negative for row ``i``."""
    return groups.unsqueeze(1) != groups.unsqueeze(0)


def cosine_matrix(image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(R, R)`` with ``[i, k] = cos(image_i, target_k)``."""
    return F.normalize(image, dim=-1, eps=1e-8) @ F.normalize(target, dim=-1, eps=1e-8).T


def ranking_per_row(
    image: torch.Tensor,
    target: torch.Tensor,
    negatives: torch.Tensor,
    margin: float = 0.0,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rank (R,), cosines (R, R))``: each row's mean ranking loss over its negatives (0 for a row
    without one; differentiable in ``image``) and the cosine matrix."""
    cos = cosine_matrix(image, target)
    z = (cos - cos.diagonal().unsqueeze(1) + margin) / temperature
    pairs = torch.where(negatives, temperature * F.softplus(z), torch.zeros_like(z))
    return pairs.sum(dim=1) / negatives.sum(dim=1).clamp_min(1), cos


@dataclass
class InBatchRanking:
    """The ranking term over one batch's guided rows, layer by layer, with its logging sums.

    Build it on every process (also one with no guided row: ``negatives`` empty), call
    :meth:`layer_loss` per guided layer and :meth:`write_stats` once, on every process (it
    reduces over processes).
    """

    negatives: torch.Tensor
    margin: float = 0.0
    temperature: float = 1.0
    sums: torch.Tensor = field(default_factory=lambda: torch.zeros(len(_STATS)))

    @classmethod
    def for_rows(
        cls,
        batch: Mapping[str, Any] | None,
        rows: torch.Tensor,
        device: torch.device,
        margin: float = 0.0,
        temperature: float = 1.0,
    ) -> InBatchRanking:
        if batch is None or len(rows) == 0:
            negatives = torch.zeros((0, 0), dtype=torch.bool, device=device)
        else:
            negatives = negative_mask(caption_groups(batch, rows.to(batch["caption_input_ids"].device)))
        return cls(negatives.to(device), margin, temperature, torch.zeros(len(_STATS), device=device))

    def layer_loss(self, image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Sum over rows of this layer's ranking loss (with gradient); updates the logging sums."""
        negatives = self.negatives.to(image.device)
        rank, cos = ranking_per_row(image, target, negatives, self.margin, self.temperature)
        with torch.no_grad():
            cos = cos.detach()
            counts = negatives.sum(dim=1)
            ranked = counts > 0
            pos = cos.diagonal()
            neg_sum = torch.where(negatives, cos, torch.zeros_like(cos)).sum(dim=1)
            best_neg = torch.where(negatives, cos, torch.full_like(cos, -2.0)).amax(dim=1)
            gap = torch.where(ranked, pos - neg_sum / counts.clamp_min(1), torch.zeros_like(pos))
            layer = torch.stack(
                [
                    rank.detach().sum(),
                    neg_sum.sum(),
                    counts.sum().to(cos.dtype),
                    gap.sum(),
                    (ranked & (pos > best_neg)).sum().to(cos.dtype),
                    ranked.sum().to(cos.dtype),
                ]
            )
            self.sums = self.sums.to(layer.device) + layer
        return rank.sum()

    def write_stats(self, extras: dict[str, Any], n_rows: float, n_layers: int, prefix: str = "tga") -> None:
        """Pool the sums over processes and log them (see ``docs/training.md``, "TGA ranking term")."""
        s = dict(zip(_STATS, (float(x) for x in global_sum_detached(self.sums)), strict=True))
        extras[f"{prefix}/rank"] = s["rank"] / max(n_rows, 1.0)
        extras[f"{prefix}/rank_rows"] = s["ranked"] / n_layers
        if s["pairs"] > 0:
            extras[f"{prefix}/cos_neg"] = s["cos_neg"] / s["pairs"]
            extras[f"{prefix}/cos_gap"] = s["gap"] / s["ranked"]
            extras[f"{prefix}/retrieval_acc"] = s["correct"] / s["ranked"]
