"""Imports every family adapter so that each registers itself. A new family: one new module,
one import line here."""

from safegap.models import (  # noqa: F401
    causal_lm,
    gemma3,
    idefics3,
    internvl,
    llava,
    llava_next,
    llava_onevision,
    mistral3,
    mllama,
    paligemma,
    qwen_vl,
)
