"""Registries plug-ins add themselves to (:mod:`safegap.plugins`): declared plug-ins are listed
without being imported, imported on first lookup, and the organism is reached only that way."""

from __future__ import annotations

import subprocess
import sys
import types
from importlib import metadata

import pytest

from safegap import plugins
from safegap.errors import UserError
from safegap.plugins import Registry


def test_every_declared_plugin_loads_as_its_kind() -> None:
    from safegap.data.benchmarks import BENCHMARKS, Benchmark
    from safegap.gap.data import DATA_SOURCES
    from safegap.steer.anchors import ANCHOR_SOURCES

    for registry in (ANCHOR_SOURCES, BENCHMARKS, DATA_SOURCES):
        names = plugins.declared(registry.group)
        assert "organism" in names, registry.group
        for name in names:
            assert callable(registry[name])
    assert issubclass(BENCHMARKS["organism"], Benchmark) and BENCHMARKS["organism"].name == "organism"


def test_library_reaches_the_organism_only_through_its_declarations() -> None:
    """Loading the library's registries and listing them imports no organism module."""
    code = (
        "import sys\n"
        "import safegap.steer.anchors as a, safegap.data.benchmarks as b, safegap.gap.data as g, safegap.cli.main\n"
        "assert 'organism' in list(b.BENCHMARKS) and 'organism' in a.ANCHOR_SOURCES\n"
        "bad = sorted(m for m in sys.modules if m.startswith('safegap.organism'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


class _EntryPoint:
    def __init__(self, name: str, value: str, dist: str) -> None:
        self.name, self.value, self.dist = name, value, types.SimpleNamespace(name=dist)


def test_third_party_entry_points_are_found(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("third_party_sources")
    module.load = lambda arg: [(f"third {arg}", None)]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "third_party_sources", module)
    fake = [_EntryPoint("third", "third_party_sources:load", "someone-else")]
    monkeypatch.setattr(metadata, "entry_points", lambda group: fake if group == "test.group" else [])
    plugins.declared.cache_clear()
    try:
        registry: Registry[object] = Registry("anchor source", "test.group")
        assert list(registry) == ["third"] and registry.loaded() == {}
        assert registry["third"] is module.load  # type: ignore[attr-defined]
        assert "nope" not in registry
        with pytest.raises(KeyError):
            registry["nope"]
    finally:
        plugins.declared.cache_clear()


def test_a_broken_declaration_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    registry: Registry[object] = Registry("benchmark", "test.broken")
    monkeypatch.setattr(registry, "_declared", lambda: {"gone": "no_such_module_xyz:Thing"})
    with pytest.raises(UserError, match="^benchmark 'gone': its plug-in 'no_such_module_xyz:Thing'"):
        registry["gone"]


def test_anchor_spec_with_an_unknown_source_names_the_sources() -> None:
    from safegap.steer.anchors import load_anchors

    with pytest.raises(UserError, match="no anchor source 'organsm' \\(sources: .*organism"):
        load_anchors("organsm:calibration")
