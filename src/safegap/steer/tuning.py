"""``Tuning``: how a shift is applied by default (alpha, form, steering policy, layers) and how that
was chosen; a plain value saved inside the shift's file (:class:`safegap.steer.ShiftVector`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Form = Literal["full", "increments"]
FORMS: tuple[str, ...] = ("full", "increments")


@dataclass(frozen=True)
class Tuning:
    """How a shift is applied by default, and how that was chosen; saved inside the file.

    ``alpha`` scales the vector; ``form`` is ``full`` (each layer's total shift) or ``increments``
    (:meth:`ShiftVector.increments`, applied instead of the vectors themselves); ``policy`` is the
    steering position policy (:data:`safegap.steer.intervene.POSITION_POLICIES`); ``layers`` is
    ``"all"`` or the tuple of steered layers. ``chosen_by`` records how (rule, sweeps, labelled
    prompt sources; empty when set by hand); it is provenance and never changes what is applied.
    """

    alpha: float = 1.0
    form: Form = "full"
    policy: str = "last"
    layers: Literal["all"] | tuple[int, ...] = "all"
    chosen_by: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"tuning form {self.form!r}: use {' or '.join(FORMS)}")
        if not math.isfinite(float(self.alpha)):
            raise ValueError(f"tuning alpha {self.alpha!r} is not a finite number")
        object.__setattr__(self, "alpha", float(self.alpha))
        if self.layers != "all":
            object.__setattr__(self, "layers", tuple(sorted({int(i) for i in self.layers})))

    def as_dict(self) -> dict[str, Any]:
        layers = self.layers if self.layers == "all" else list(self.layers)
        return {
            "alpha": self.alpha,
            "form": self.form,
            "policy": self.policy,
            "layers": layers,
            **self.chosen_by,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Tuning:
        """Read :meth:`as_dict`, or the plain dict files saved before the typed field (where the
        policy was called ``positions``); every other key is kept in ``chosen_by``."""
        applied = {"alpha", "form", "policy", "positions", "layers"}
        layers = data.get("layers", "all")
        return cls(
            alpha=float(data.get("alpha", 1.0)),
            form=data.get("form", "full"),
            policy=str(data.get("policy", data.get("positions", "last"))),
            layers="all" if layers == "all" else tuple(layers),
            chosen_by={k: v for k, v in data.items() if k not in applied},
        )

    def applied(self) -> tuple[float, str, str, Any]:
        """What the tuning changes about application (``chosen_by`` excluded)."""
        return (self.alpha, self.form, self.policy, self.layers)

    def describe(self) -> str:
        layers = "all" if self.layers == "all" else ",".join(map(str, self.layers))
        return f"alpha={self.alpha:g},form={self.form},policy={self.policy},layers={layers}"
