"""Plug-in specs on the command line: ``NAME``, ``NAME:ARG`` or ``NAME:ARG,key=value,...``.

The same grammar names benchmarks, judges and defenses (it is the grammar of
:func:`safegap.eval.defenses.parse_defense_spec`). Because a list of specs is also written with
commas (``--defense none,cmrm:shift.safetensors,alpha=0.5``), :func:`split_specs` starts a new
spec only at a piece that begins with a known plug-in name; ``key=value`` pieces and free text
stay with the spec before them.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Spec:
    name: str
    arg: str | None = None
    options: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        parts = [self.arg] if self.arg else []
        parts += [f"{k}={v}" for k, v in self.options.items()]
        return self.name + (":" + ",".join(parts) if parts else "")


def parse_spec(spec: str, kind: str = "plug-in") -> Spec:
    """``"guard:path,max_new_tokens=10"`` -> ``Spec("guard", "path", {"max_new_tokens": "10"})``."""
    text = spec.strip()
    if not text:
        raise ValueError(f"empty {kind} spec")
    name, _, rest = text.partition(":")
    arg: str | None = None
    options: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if eq and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
            if key.strip() in options:
                raise ValueError(f"{kind} spec {spec!r}: option {key.strip()!r} given twice")
            options[key.strip()] = value.strip()
        elif arg is None:
            arg = part
        else:
            raise ValueError(f"{kind} spec {spec!r}: more than one positional argument ({arg!r}, {part!r})")
    return Spec(name.strip(), arg, options)


def _head(piece: str) -> str:
    return re.split(r"[:+]", piece.strip(), maxsplit=1)[0].strip()


_OPTION = re.compile(r"\s*[A-Za-z_][A-Za-z0-9_]*\s*=")


def split_specs(values: str | Iterable[str], known: Collection[str]) -> list[str]:
    """Split comma-separated spec lists (``values`` may be one string or several, e.g. a
    repeated CLI option).

    A piece starts a new spec when its name is in ``known``, or when the spec so far has no
    ``:`` (so it takes no argument: ``none,cmrn:x`` gives the unknown name ``cmrn`` its own
    spec and error). A ``key=value`` piece after a bare name becomes that name's first option.
    """
    items = [values] if isinstance(values, str) else list(values)
    out: list[str] = []
    for value in items:
        current = ""
        for piece in value.split(","):
            if not current:
                current = piece
            elif _head(piece) in known:
                out.append(current.strip())
                current = piece
            elif ":" in current:
                current += "," + piece
            elif _OPTION.match(piece):
                current += ":" + piece.strip()
            else:
                out.append(current.strip())
                current = piece
        if current.strip():
            out.append(current.strip())
    return [s for s in out if s]
