"""Defenses as plug-ins: anything that turns (texts, images) into replies for a VLM.

A defense spec on the command line is ``NAME`` or ``NAME:ARG[,key=value...]``, for example
``none``, ``cmrm:shift.safetensors,alpha=1.0``. Modules register factories in ``DEFENSES``;
``parse_defense_spec`` splits a spec and ``make_defense`` builds one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from safegap.models.adapter import ImagesArg
from safegap.models.generation import generate
from safegap.models.loading import VLM


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


@dataclass(frozen=True)
class DefenseSpec:
    name: str
    arg: str | None = None
    options: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        parts = [self.arg] if self.arg else []
        parts += [f"{k}={v}" for k, v in self.options.items()]
        return self.name + (":" + ",".join(parts) if parts else "")


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


DefenseFactory = Callable[[DefenseSpec, VLM], Defense]
DEFENSES: dict[str, DefenseFactory] = {"none": lambda spec, vlm: NoDefense()}


def parse_defense_spec(spec: str) -> DefenseSpec:
    """``"cmrm:path,alpha=1.0"`` -> ``DefenseSpec("cmrm", "path", {"alpha": "1.0"})``."""
    spec = spec.strip()
    if not spec:
        raise ValueError("empty defense spec")
    name, _, rest = spec.partition(":")
    arg: str | None = None
    options: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        if "=" in part:
            key, _, value = part.partition("=")
            if key.strip() in options:
                raise ValueError(f"defense spec {spec!r}: option {key.strip()!r} given twice")
            options[key.strip()] = value.strip()
        elif arg is None:
            arg = part
        else:
            raise ValueError(f"defense spec {spec!r}: more than one positional argument ({arg!r}, {part!r})")
    return DefenseSpec(name.strip(), arg, options)


def make_defense(spec: str | DefenseSpec, vlm: VLM) -> Defense:
    parsed = parse_defense_spec(spec) if isinstance(spec, str) else spec
    if parsed.name not in DEFENSES:
        raise ValueError(f"unknown defense {parsed.name!r}; known: {', '.join(sorted(DEFENSES))}")
    return DEFENSES[parsed.name](parsed, vlm)


def _lazy_factory(module: str, attr: str) -> DefenseFactory:
    """A factory that imports its module on first use (wrapper defenses live in
    :mod:`safegap.eval.wrappers`, CMRM in :mod:`safegap.eval.cmrm`; both import this module)."""

    def factory(spec: DefenseSpec, vlm: VLM) -> Defense:
        return getattr(importlib.import_module(module), attr)(spec, vlm)  # type: ignore[no-any-return]

    return factory


DEFENSES.setdefault("system_prompt", _lazy_factory("safegap.eval.wrappers", "make_system_prompt"))
DEFENSES.setdefault("ecso", _lazy_factory("safegap.eval.wrappers", "make_ecso"))

DEFENSES.setdefault("cmrm", _lazy_factory("safegap.eval.cmrm", "make_cmrm"))
DEFENSES.setdefault("cmrm_sample", _lazy_factory("safegap.eval.cmrm", "make_cmrm_sample"))
