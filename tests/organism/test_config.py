"""The organism's config hash: what a cached base depends on."""

from __future__ import annotations

from dataclasses import replace

from safegap.organism.config import OrganismConfig


def reading(config: OrganismConfig, steps: int) -> OrganismConfig:
    return replace(config, text=replace(config.text, read_steps=steps))


def test_the_opt_in_reading_phase_keeps_v2_hashes_and_the_cached_base() -> None:
    v2 = OrganismConfig()
    with_reading = reading(v2, 300)
    assert v2.digest() == reading(v2, 0).digest()
    assert with_reading.digest() != v2.digest()  # a different checkpoint ...
    assert with_reading.digest("base") == v2.digest("base")  # ... on the same cached stages 0-1
    assert (
        replace(with_reading, text=replace(with_reading.text, read_lr=3e-3)).digest() != with_reading.digest()
    )


def test_scaling_scales_the_reading_phase_and_leaves_it_off_when_off() -> None:
    assert reading(OrganismConfig(), 300).scaled(0.1).text.read_steps == 30
    assert OrganismConfig().scaled(0.1).text.read_steps == 0
    config = reading(OrganismConfig(), 300)
    assert OrganismConfig.from_dict(config.to_dict()) == config
