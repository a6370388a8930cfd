"""Comma-list options of the organism's commands (``--variant``, ``--defense``, ``--regime``,
``--seeds``): one parser each, one-line errors that name the unknown item and the known ones."""

from __future__ import annotations

from collections.abc import Collection, Sequence


def parse_names(spec: str | Sequence[str], registry: Collection[str], what: str) -> list[str]:
    """``"a,b"`` -> ["a", "b"], each checked against ``registry`` (clear error on unknown)."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"no {what} given")
    for name in names:
        if name not in registry:
            raise ValueError(f"unknown {what} {name!r}; known: {', '.join(sorted(registry))}")
    return names


def parse_seeds(spec: str) -> list[int]:
    """``"0,1,2"`` or ``"0-4"``."""
    seeds: list[int] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
        except ValueError as exc:
            raise ValueError(f"seeds: {part!r} is not an integer or a range like 0-4") from exc
    if not seeds:
        raise ValueError("no seeds given")
    return seeds
