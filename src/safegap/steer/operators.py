"""How a shift vector changes a hidden state: three plain functions on tensors.

Every operator maps ``(hidden, vector, alpha, ...) -> new hidden`` with ``hidden`` of shape
``(..., d)`` and ``vector`` broadcastable to it. They form a ladder of selectivity
(see ``docs/cmrm.md``):

* :func:`add` -- CMRM: remove the whole modality shift, ``h + alpha * v`` (``v`` is
  text-only minus corrupted, so *adding* it removes the shift an image causes; the operator is
  named for what it computes, not for the paper's sign convention).
* :func:`project` -- ShiftDC-style: remove only the part of the shift along a safety direction
  ``u``: ``h + alpha * (v . u_hat) u_hat``; the rest of the visual shift is kept.
* :func:`gated` -- ASTRA-style: scale the correction by how far ``h`` lies along a harmful
  direction ``g`` from a benign reference ``r``: ``h + alpha * clamp((h - r) . g / |g|^2) * v``.
  With ``g = mean(harmful) - mean(benign)`` and ``r = mean(benign)`` the gate is about 0 for
  benign inputs and about 1 for harmful ones, so benign inputs are barely touched.

``add`` and ``project`` do not depend on ``hidden``; the hook engine precomputes their
correction once per layer. A custom operator with the same signature is applied as is.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Operator = Callable[..., torch.Tensor]


def add(hidden: torch.Tensor, vector: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """CMRM: ``hidden + alpha * vector``."""
    return hidden + alpha * vector


def check_direction(direction: torch.Tensor, what: str = "direction") -> None:
    """Reject a zero (or non-finite) direction with a clear message."""
    norm = float(direction.float().norm())
    if not norm > 0 or norm != norm or norm == float("inf"):
        raise ValueError(f"the {what} has norm {norm}; it must be a non-zero finite vector")


def _unit(direction: torch.Tensor) -> torch.Tensor:
    norm = direction.norm(dim=-1, keepdim=True)
    if bool((norm == 0).any()):
        raise ValueError("the safety direction is the zero vector")
    return direction / norm


def project(
    hidden: torch.Tensor, vector: torch.Tensor, alpha: float = 1.0, *, direction: torch.Tensor
) -> torch.Tensor:
    """ShiftDC-style: add only the component of ``vector`` along ``direction`` (any length)."""
    unit = _unit(direction.to(vector.dtype))
    along = (vector * unit).sum(dim=-1, keepdim=True) * unit
    return hidden + alpha * along


def gate(
    hidden: torch.Tensor,
    direction: torch.Tensor,
    reference: torch.Tensor | None = None,
    clamp: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """``clamp((hidden - reference) . direction / |direction|^2)``, shape ``hidden.shape[:-1] + (1,)``.

    Computed in float32 at least: a bf16 dot product over thousands of dimensions is too coarse.
    No host synchronisation happens here (it runs in a hook at every decode step), so a zero
    ``direction`` yields NaN; :func:`check_direction` rejects it up front.
    """
    work = torch.promote_types(hidden.dtype, torch.float32)
    h = hidden.to(work)
    g = direction.to(work)
    if reference is not None:
        h = h - reference.to(work)
    denom = (g * g).sum(dim=-1, keepdim=True)  # zero direction: checked once at attach time, not here
    return ((h * g).sum(dim=-1, keepdim=True) / denom).clamp(clamp[0], clamp[1])


def gated(
    hidden: torch.Tensor,
    vector: torch.Tensor,
    alpha: float = 1.0,
    *,
    direction: torch.Tensor,
    reference: torch.Tensor | None = None,
    clamp: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """ASTRA-style: ``hidden + alpha * gate(hidden) * vector`` (see :func:`gate`)."""
    weight = gate(hidden, direction, reference, clamp).to(hidden.dtype)
    return hidden + alpha * weight * vector


OPERATORS: dict[str, Operator] = {"add": add, "project": project, "gated": gated}
#: Operators whose correction does not depend on the hidden state (precomputed once per layer).
HIDDEN_INDEPENDENT: frozenset[Operator] = frozenset({add, project})


def resolve_operator(operator: str | Operator) -> Operator:
    if callable(operator):
        return operator
    if operator not in OPERATORS:
        raise ValueError(f"unknown operator {operator!r}; known: {', '.join(OPERATORS)}")
    return OPERATORS[operator]
