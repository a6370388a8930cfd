"""The one spec grammar and the one layer-range grammar of safegap (the bottom of the package).

**Plug-in specs** name benchmarks, judges, defenses, anchor sources and gap data sources:
``NAME``, ``NAME:ARG`` or ``NAME:ARG,key=value,...`` (the ``ARG`` may be left out:
``NAME:key=value``). Option keys are identifiers; a piece that is not ``key=value`` is the
positional ``ARG`` (at most one). Each plug-in declares the keys it takes
(:meth:`Spec.check_options`), so a misspelt key is a one-line :class:`~safegap.errors.UserError`
naming the spec, the bad key and the valid ones, never silently ignored. Because a list of specs
is also written with commas (``--defense none,cmrm:shift.safetensors,alpha=0.5``),
:func:`split_specs` starts a new spec only at a piece that begins with a known plug-in name.

**Layer ranges** (``--layers``, ``layers=``): ``all``, ``N``, ``A-B`` (inclusive) and
comma-separated lists of those (``2,4-6``), or the same as Python ints. Layers are decoder-layer
indices from 0 (the output of decoder layer ``i``). A negative index ALWAYS counts from the
model's last decoder layer: ``-1`` is layer ``num_layers - 1`` whatever the layers of a shift
vector or a recording are (``-4--1`` is the last four layers). :func:`resolve_layers` turns a
selection into a sorted list of distinct indices for a model with ``num_layers`` layers.

This module imports nothing from safegap but :mod:`safegap.errors`, so every layer may use it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from safegap.errors import UserError

__all__ = [
    "Layers",
    "Spec",
    "check_layers",
    "parse_layers",
    "parse_spec",
    "resolve_layers",
    "resolve_within",
    "split_specs",
    "unknown_option",
]

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPTION = re.compile(r"\s*[A-Za-z_][A-Za-z0-9_]*\s*=")


def unknown_option(where: str, key: str, valid: Collection[str]) -> UserError:
    """``"<where>: unknown option 'catgory'; valid: category, id (did you mean 'category'?)"``."""
    if not valid:
        return UserError(f"{where}: unknown option {key!r}; it takes no options")
    close = difflib.get_close_matches(key, list(valid), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return UserError(f"{where}: unknown option {key!r}; valid: {', '.join(sorted(valid))}{hint}")


@dataclass(frozen=True)
class Spec:
    """A parsed plug-in spec; ``str(spec)`` gives the canonical text back."""

    name: str
    arg: str | None = None
    options: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        parts = [self.arg] if self.arg else []
        parts += [f"{k}={v}" for k, v in self.options.items()]
        return self.name + (":" + ",".join(parts) if parts else "")

    def check_options(self, valid: Collection[str], kind: str = "plug-in") -> Spec:
        """``self`` if every option key is in ``valid``, else the one-line error for the first
        unknown key (``kind`` is the word for the plug-in: ``benchmark``, ``judge``...)."""
        for key in self.options:
            if key not in valid:
                raise unknown_option(f"{kind} {self.name}", key, valid)
        return self


def parse_spec(spec: str, kind: str = "plug-in", valid: Collection[str] | None = None) -> Spec:
    """``"guard:path,max_new_tokens=10"`` -> ``Spec("guard", "path", {"max_new_tokens": "10"})``;
    with ``valid``, unknown option keys are an error (:meth:`Spec.check_options`)."""
    text = spec.strip()
    if not text:
        raise UserError(f"empty {kind} spec")
    name, _, rest = text.partition(":")
    arg: str | None = None
    options: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if eq and _KEY.fullmatch(key.strip()):
            if key.strip() in options:
                raise UserError(f"{kind} spec {spec!r}: option {key.strip()!r} given twice")
            options[key.strip()] = value.strip()
        elif arg is None:
            arg = part
        else:
            raise UserError(f"{kind} spec {spec!r}: more than one positional argument ({arg!r}, {part!r})")
    parsed = Spec(name.strip(), arg, options)
    return parsed if valid is None else parsed.check_options(valid, kind)


def _head(piece: str) -> str:
    return re.split(r"[:+]", piece.strip(), maxsplit=1)[0].strip()


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


# -- layer ranges ------------------------------------------------------------------------------

#: A layer selection: ``"all"``, range text (``"2,4-6"``, ``"-1"``), an int, or ints.
Layers = str | int | Sequence[int]

_RANGE = re.compile(r"(-?\d+)(?:\s*-\s*(-?\d+))?")
_USAGE = "use all, N, A-B or a comma list of those (negatives count from the model's last layer)"


def parse_layers(text: str, what: str = "layers") -> list[tuple[int, int]] | None:
    """``None`` for ``all``, else the ``(first, last)`` pairs of the text, unresolved."""
    if text.strip() == "all":
        return None
    pairs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = _RANGE.fullmatch(part)
        if match is None:
            raise UserError(f"{what}={text!r}: bad layer range {part!r}; {_USAGE}")
        lo = int(match[1])
        pairs.append((lo, int(match[2]) if match[2] is not None else lo))
    if not pairs:
        raise UserError(f"{what}={text!r}: no layers; {_USAGE}")
    return pairs


def check_layers(text: str, what: str = "layers") -> str:
    """``text`` (stripped) if it is a valid layer range, so a typo fails before a model loads."""
    parse_layers(text, what)
    return text.strip()


def _index(layer: int, num_layers: int, origin: str) -> int:
    index = layer + num_layers if layer < 0 else layer
    if not 0 <= index < num_layers:
        raise UserError(
            f"{origin}: layer {layer} is out of range; the model has {num_layers} decoder layers "
            f"(0..{num_layers - 1}, or -{num_layers}..-1 from the last)"
        )
    return index


def resolve_layers(layers: Layers, num_layers: int, what: str = "layers") -> list[int]:
    """Sorted distinct layer indices of ``layers`` for a model with ``num_layers`` decoder layers."""
    if isinstance(layers, str):
        origin = f"{what}={layers!r}"
        pairs = parse_layers(layers, what)
        if pairs is None:
            return list(range(num_layers))
        out: set[int] = set()
        for lo, hi in pairs:
            first, last = _index(lo, num_layers, origin), _index(hi, num_layers, origin)
            if last < first:
                raise UserError(f"{origin}: layer range {lo}-{hi} runs backwards")
            out.update(range(first, last + 1))
        return sorted(out)
    raw = [layers] if isinstance(layers, int) else list(layers)
    origin = f"{what}={raw if not isinstance(layers, int) else layers}"
    if not raw:
        raise UserError(f"{origin}: no layers")
    for item in raw:
        if isinstance(item, bool) or not isinstance(item, int):
            raise UserError(f"{origin}: {item!r} is not a layer index; {_USAGE}")
    return sorted({_index(i, num_layers, origin) for i in raw})


def resolve_within(
    layers: Layers,
    available: Collection[int],
    num_layers: int,
    what: str = "layers",
    holder: str = "the shift vector",
) -> list[int]:
    """:func:`resolve_layers` restricted to the layers ``holder`` has; ``all`` means all of those.
    Negatives still count from the model's last layer; a layer ``holder`` lacks is an error."""
    have = sorted(available)
    if isinstance(layers, str) and layers.strip() == "all":
        return have
    chosen = resolve_layers(layers, num_layers, what)
    missing = [i for i in chosen if i not in set(have)]
    if missing:
        if not have:
            has = "no layers"
        elif have == list(range(have[0], have[-1] + 1)):
            has = f"layers {have[0]}..{have[-1]}"
        else:
            has = f"layers {', '.join(map(str, have))}"
        raise UserError(f"{what}={layers!r}: layer {missing[0]} is not in {holder} (it has {has})")
    return chosen
