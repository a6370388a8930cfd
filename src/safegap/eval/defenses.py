"""Defenses as plug-ins: anything that turns (texts, images) into replies for a VLM.

A defense spec on the command line is ``NAME`` or ``NAME:ARG[,key=value...]``, for example
``none``, ``cmrm:shift.safetensors,alpha=1.0``. Modules register factories in ``DEFENSES``;
``safegap.specs.parse_spec`` splits a spec and ``make_defense`` builds one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from safegap.models.adapter import ImagesArg
from safegap.models.generation import generate
from safegap.models.loading import VLM
from safegap.specs import Spec, parse_spec


class Defense(Protocol):
    """Produces replies; ``id`` names it in results (e.g. ``cmrm:shift.safetensors,alpha=1.0``)."""

    id: str

    def generate(
        self,
        vlm: VLM,
        texts: Sequence[str],
        images: ImagesArg,
        max_new_tokens: int,
        system: str | None = None,
    ) -> list[str]: ...


@dataclass
class NoDefense:
    """Plain greedy generation."""

    id: str = "none"
    batch_size: int = 8
    #: Extra ``generate`` options (e.g. sampling: ``do_sample``, ``temperature``); empty = greedy.
    generation_kwargs: dict[str, Any] = field(default_factory=dict)

    def generate(
        self,
        vlm: VLM,
        texts: Sequence[str],
        images: ImagesArg,
        max_new_tokens: int,
        system: str | None = None,
    ) -> list[str]:
        return generate(
            vlm,
            texts,
            images,
            max_new_tokens=max_new_tokens,
            system=system,
            batch_size=self.batch_size,
            **self.generation_kwargs,
        )


DefenseFactory = Callable[[Spec, VLM], Defense]
DEFENSES: dict[str, DefenseFactory] = {"none": lambda spec, vlm: NoDefense()}


def make_defense(spec: str | Spec, vlm: VLM) -> Defense:
    parsed = parse_spec(spec, kind="defense") if isinstance(spec, str) else spec
    if parsed.name not in DEFENSES:
        raise ValueError(f"unknown defense {parsed.name!r}; known: {', '.join(sorted(DEFENSES))}")
    return DEFENSES[parsed.name](parsed, vlm)


def _lazy_factory(module: str, attr: str) -> DefenseFactory:
    """A factory that imports its module on first use (wrapper defenses live in
    :mod:`safegap.eval.wrappers`, which imports this module)."""

    def factory(spec: Spec, vlm: VLM) -> Defense:
        return getattr(importlib.import_module(module), attr)(spec, vlm)  # type: ignore[no-any-return]

    return factory


DEFENSES.setdefault("system_prompt", _lazy_factory("safegap.eval.wrappers", "make_system_prompt"))
DEFENSES.setdefault("ecso", _lazy_factory("safegap.eval.wrappers", "make_ecso"))

from safegap.steer import defenses as _steer_defenses  # noqa: E402,F401  (registers cmrm, cmrm_sample)
