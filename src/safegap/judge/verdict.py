"""What every judge reads and writes: :class:`JudgeInput` in, :class:`Verdict` out.

Kept apart from :mod:`safegap.judge.base` (the registry) so a judge module, the refusal-phrase
judge included, can produce verdicts without importing the registry that imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image


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
