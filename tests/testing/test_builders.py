"""safegap.testing: one table row per family, one generic build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safegap.testing import FAMILIES, build_family, build_tiny, build_tiny_causal_lm, llava_family


def test_unknown_family_is_one_line_listing_the_known() -> None:
    with pytest.raises(ValueError, match=r"no tiny builder for family 'lava'; known: .*llava, llava_next"):
        build_tiny("lava", "/nonexistent")
    with pytest.raises(ValueError, match=r"no tiny causal LM for 'gpt2'; known: llama, mistral"):
        build_tiny_causal_lm("/nonexistent", "gpt2")


def test_every_row_names_its_model_and_config_classes() -> None:
    import transformers

    for name, family in FAMILIES.items():
        assert hasattr(transformers, family.model), name
        assert hasattr(transformers, family.config), name


def test_a_larger_llava_comes_from_the_same_row(tmp_path: Path) -> None:
    family = llava_family(image_size=64, patch=16, text={"hidden_size": 32, "head_dim": 8})
    config = json.loads((build_family(family, tmp_path / "big") / "config.json").read_text())
    assert config["vision_config"]["image_size"] == 64
    assert config["image_seq_length"] == 16
    assert config["text_config"]["hidden_size"] == 32
    assert config["text_config"]["num_hidden_layers"] == 3  # the tiny default where not overridden


def test_same_seed_same_weights_other_seed_other_weights(tmp_path: Path) -> None:
    a, b, c = (build_tiny("llava", tmp_path / name, seed) for name, seed in (("a", 0), ("b", 0), ("c", 1)))
    weights = [(p / "model.safetensors").read_bytes() for p in (a, b, c)]
    assert weights[0] == weights[1] != weights[2]
