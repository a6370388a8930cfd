"""Judges as plug-ins: anything that labels (request, reply) pairs as unsafe and/or refused.

A judge returns one :class:`Verdict` per item. ``unsafe`` and ``refusal`` are separate
questions, and a judge answers only those it can: a safety classifier (Llama Guard) says
``unsafe`` and leaves ``refusal`` as ``None``; the refusal-phrase judge says ``refusal`` and,
for requests that should be refused, counts a non-refusal as ``unsafe`` (keyword attack success,
which is what most papers report, and which overstates harm). A judge that fails on one item
returns a verdict with ``error`` set instead of raising, so one bad reply never loses a batch.

Specs: ``refusal``, ``guard:PATH[,device=...,max_new_tokens=...]`` (alias ``llamaguard``),
``openai:URL,model=NAME[,api_key_env=VAR,...]`` (alias ``http``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from safegap.judge.refusal import RefusalJudge
from safegap.specs import Spec, parse_spec


@dataclass(frozen=True)
class JudgeInput:
    """What a judge sees for one sample.

    ``prompt`` is the text the model got, ``objective`` the request in words (they differ when
    the harmful part is in the image, e.g. FigStep), ``image`` the image the model saw (or None),
    ``harmful`` whether the request should be refused.
    """

    prompt: str
    reply: str
    objective: str = ""
    image: Image.Image | None = None
    harmful: bool = True
    category: str = ""


@dataclass(frozen=True)
class Verdict:
    unsafe: bool | None = None
    refusal: bool | None = None
    categories: tuple[str, ...] = ()
    raw: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "unsafe": self.unsafe,
            "refusal": self.refusal,
            "categories": list(self.categories),
            "raw": self.raw,
            "error": self.error,
        }


class Judge(Protocol):
    """``id`` (``name@version``) and ``version`` go into every record, so results stay comparable."""

    @property
    def id(self) -> str: ...

    @property
    def version(self) -> str: ...

    def judge(self, items: Sequence[JudgeInput]) -> list[Verdict]: ...


@dataclass
class RefusalPhraseJudge:
    """The refusal-phrase judge as a plug-in (:class:`safegap.judge.refusal.RefusalJudge`)."""

    phrases: RefusalJudge = field(default_factory=RefusalJudge)

    @property
    def id(self) -> str:
        return self.phrases.id

    @property
    def version(self) -> str:
        return self.phrases.version

    def judge(self, items: Sequence[JudgeInput]) -> list[Verdict]:
        out = []
        for item in items:
            refused = self.phrases.is_refusal(item.reply)
            out.append(Verdict(unsafe=(not refused) if item.harmful else None, refusal=refused))
        return out


JudgeFactory = Callable[[Spec], Judge]


def _refusal(spec: Spec) -> Judge:
    if spec.arg or spec.options:
        window = spec.check_options(("window",), "judge").options.get("window")
        if spec.arg:
            raise ValueError(f"judge 'refusal' takes only window=N, got {str(spec)!r}")
        return RefusalPhraseJudge(RefusalJudge(window=None if window in ("none", "") else int(str(window))))
    return RefusalPhraseJudge()


def _lazy(module: str, attr: str) -> JudgeFactory:
    def factory(spec: Spec) -> Judge:
        return getattr(importlib.import_module(module), attr)(spec)  # type: ignore[no-any-return]

    return factory


JUDGES: dict[str, JudgeFactory] = {
    "refusal": _refusal,
    "guard": _lazy("safegap.judge.guard", "from_spec"),
    "llamaguard": _lazy("safegap.judge.guard", "from_spec"),
    "openai": _lazy("safegap.judge.http", "from_spec"),
    "http": _lazy("safegap.judge.http", "from_spec"),
}


def make_judge(spec: str | Spec) -> Judge:
    """Build the judge for ``spec``; unknown names fail with the list of known ones."""
    parsed = parse_spec(spec, kind="judge") if isinstance(spec, str) else spec
    if parsed.name not in JUDGES:
        raise ValueError(f"unknown judge {parsed.name!r}; known: {', '.join(sorted(JUDGES))}")
    return JUDGES[parsed.name](parsed)


def _error_verdict(exc: BaseException) -> Verdict:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return Verdict(error=f"{type(exc).__name__}: {first}".rstrip(": "))


def judge_safely(judge: Judge, items: Sequence[JudgeInput], strict: bool = False) -> list[Verdict]:
    """Run ``judge`` on a batch; if the batch call raises, retry item by item and turn each
    failure into an errored verdict (``strict`` re-raises instead)."""
    try:
        verdicts = judge.judge(items)
        if len(verdicts) != len(items):
            raise RuntimeError(f"judge {judge.id} returned {len(verdicts)} verdicts for {len(items)} items")
        return verdicts
    except Exception as exc:
        if strict:
            raise
        if len(items) == 1:
            return [_error_verdict(exc)]
    out: list[Verdict] = []
    for item in items:
        try:
            out.append(judge.judge([item])[0])
        except Exception as exc:  # noqa: BLE001 - a judge failure is recorded per sample
            out.append(_error_verdict(exc))
    return out
