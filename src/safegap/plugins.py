"""Registries that plug-ins add themselves to, so the library never imports a plug-in by name.

A :class:`Registry` maps names to plug-ins (anchor sources, benchmarks, gap data sources). A
plug-in gets in one of two ways:

* it calls ``registry.register(name, obj)`` (or a wrapper such as ``register_benchmark``) when
  its module is imported; or
* it is *declared* as a Python entry point in the registry's group, e.g. in pyproject.toml::

      [project.entry-points."safegap.benchmarks"]
      organism = "safegap.organism.benchmark:Organism"

  and the registry imports ``module:attr`` the first time the name is looked up (a declaration
  of a bare ``module`` means importing it registers the name). Listing a registry names declared
  plug-ins without importing them.

Declarations are read from the installed package metadata (``importlib.metadata``) and, when
safegap runs from a source tree (``src/safegap`` next to a ``pyproject.toml`` of project
``safegap``), from that pyproject.toml instead of safegap's own installed metadata: the tree
being run is the truth, so a checkout works without reinstalling after its entry points change.
Other distributions' entry points are always read from their metadata.

This module imports nothing from safegap but :mod:`safegap.errors`.
"""

from __future__ import annotations

import importlib
import tomllib
from collections.abc import Callable, Iterator, MutableMapping
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Generic, TypeVar

from safegap.errors import UserError

__all__ = ["ANCHOR_SOURCES_GROUP", "BENCHMARKS_GROUP", "GAP_SOURCES_GROUP", "Registry", "declared"]

T = TypeVar("T")

ANCHOR_SOURCES_GROUP = "safegap.anchor_sources"
BENCHMARKS_GROUP = "safegap.benchmarks"
GAP_SOURCES_GROUP = "safegap.gap_sources"

_DIST = "safegap"


@cache
def _source_tree_entry_points() -> dict[str, dict[str, str]] | None:
    """``[project.entry-points]`` of the pyproject.toml next to this source tree, or ``None``
    when safegap is not running from its source tree."""
    path = Path(__file__).resolve().parents[2] / "pyproject.toml"
    if not path.is_file():
        return None
    try:
        project = tomllib.loads(path.read_text(encoding="utf-8")).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return None
    if project.get("name") != _DIST:
        return None
    groups = project.get("entry-points", {})
    return {str(g): {str(k): str(v) for k, v in table.items()} for g, table in groups.items()}


@cache
def declared(group: str) -> dict[str, str]:
    """``{name: "module:attr"}`` of every plug-in declared in ``group`` (see module docstring)."""
    tree = _source_tree_entry_points()
    out: dict[str, str] = {}
    for ep in metadata.entry_points(group=group):
        dist = getattr(ep, "dist", None)
        if tree is not None and dist is not None and dist.name == _DIST:
            continue  # the source tree's pyproject.toml speaks for safegap itself
        out[ep.name] = ep.value
    if tree is not None:
        out.update(tree.get(group, {}))
    return out


def _load(value: str) -> object | None:
    """Import ``module[:attr]``; the attribute, or ``None`` for a bare module."""
    module_name, _, attr = value.partition(":")
    module = importlib.import_module(module_name.strip())
    obj: object = module
    for part in filter(None, attr.strip().split(".")):
        obj = getattr(obj, part)
    return obj if attr.strip() else None


class Registry(MutableMapping[str, T], Generic[T]):
    """Name -> plug-in; a declared plug-in is imported on first lookup (module docstring).

    ``kind`` is the word used in errors (``"benchmark"``); ``check`` may validate what a
    declaration loads (e.g. that it is a Benchmark subclass)."""

    def __init__(self, kind: str, group: str, check: Callable[[str, object], T] | None = None) -> None:
        self.kind = kind
        self.group = group
        self._check = check
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        self._items[name] = item
        return item

    def _declared(self) -> dict[str, str]:
        return declared(self.group)

    def __getitem__(self, name: str) -> T:
        if name in self._items:
            return self._items[name]
        value = self._declared().get(name)
        if value is None:
            raise KeyError(name)
        try:
            obj = _load(value)
        except (ImportError, AttributeError) as exc:
            raise UserError(
                f"{self.kind} {name!r}: its plug-in {value!r} ({self.group}) does not load: {exc}"
            ) from exc
        if name not in self._items:  # a bare module registers itself on import
            if obj is None:
                raise UserError(f"{self.kind} {name!r}: importing {value!r} did not register it")
            self._items[name] = self._check(name, obj) if self._check else obj  # type: ignore[assignment]
        return self._items[name]

    def __setitem__(self, name: str, item: T) -> None:
        self._items[name] = item

    def __delitem__(self, name: str) -> None:
        del self._items[name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._items or name in self._declared())

    def __iter__(self) -> Iterator[str]:
        return iter(sorted({*self._items, *self._declared()}))

    def __len__(self) -> int:
        return len({*self._items, *self._declared()})

    def loaded(self) -> dict[str, T]:
        """The plug-ins imported so far (listing them all would import every declared one)."""
        return dict(self._items)

    def known(self) -> str:
        """``"a, b, c"``: every registered or declared name, for "unknown X" errors."""
        return ", ".join(self) or "none registered"
