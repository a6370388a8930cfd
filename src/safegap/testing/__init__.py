"""Tiny random checkpoints of every supported family, built offline, for tests and benchmarks.

The weights are random, so outputs are junk, but the architecture, processor and chat template are
the family's, so every code path that takes a real checkpoint can be exercised in seconds on a CPU::

    from safegap.testing import build_tiny, load_tiny
    path = build_tiny("qwen2_vl", "/tmp/tiny-qwen")   # an ordinary Hugging Face checkpoint
    vlm = load_tiny("llava", "/tmp/tiny")            # built once, then loaded

Each family is one row of :data:`FAMILIES` (a :class:`TinyFamily`: class names and keyword
arguments); :func:`build_family` builds any row, so benchmarks time larger variants
(:func:`llava_family` with other sizes) through the same code.
"""

from safegap.models.tokenizer import LLAVA_TEMPLATE, train_tokenizer
from safegap.testing.build import (
    build_family,
    build_tiny,
    build_tiny_causal_lm,
    load_tiny,
    tiny_text_config,
)
from safegap.testing.families import CAUSAL_LM_CONFIGS, FAMILIES, causal_lm_family, llava_family
from safegap.testing.spec import TextSpec, TinyFamily

__all__ = [
    "CAUSAL_LM_CONFIGS",
    "FAMILIES",
    "LLAVA_TEMPLATE",
    "TextSpec",
    "TinyFamily",
    "build_family",
    "build_tiny",
    "build_tiny_causal_lm",
    "causal_lm_family",
    "llava_family",
    "load_tiny",
    "tiny_text_config",
    "train_tokenizer",
]
