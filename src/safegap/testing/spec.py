"""What a tiny family is, as data: :class:`TinyFamily` (one row of
:data:`safegap.testing.families.FAMILIES`) and its :class:`TextSpec`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: The special-token roles whose ids a text config takes by default.
PAD_BOS_EOS = ("pad", "bos", "eos")


@dataclass(frozen=True)
class TextSpec:
    """The text config: ``cls`` (None: a plain dict, as Qwen-VL configs take it) built from
    :func:`safegap.testing.build.tiny_text_config` with ``overrides``, minus ``drop``, plus the
    tokenizer's ids for ``ids``; ``as_dict`` hands the composite config a dict."""

    cls: str | None = "LlamaConfig"
    overrides: dict[str, Any] = field(default_factory=dict)
    ids: tuple[str, ...] = PAD_BOS_EOS
    drop: tuple[str, ...] = ()
    as_dict: bool = False


@dataclass(frozen=True)
class TinyFamily:
    """One tiny checkpoint. ``tokens``: config keyword -> the special token whose id it takes;
    ``processor``: built around the image processor and tokenizer with the tokenizer's chat
    template (None: the image processor is saved alone); ``init``: a fix-up after the seeded
    initialisation (a gate or projector that starts at zero would hide every image);
    ``generation_ids``: the token roles written into ``generation_config``; ``save_tokenizer``:
    also save the tokenizer beside the processor."""

    model: str
    config: str
    tokenizer: dict[str, Any]
    text: TextSpec
    vision: tuple[str | None, dict[str, Any]] | None
    image_processor: tuple[str, dict[str, Any]] | None
    tokens: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    processor: tuple[str, dict[str, Any]] | None = None
    init: Callable[[Any], None] | None = None
    generation_ids: tuple[str, ...] = PAD_BOS_EOS
    save_tokenizer: bool = True
    eval_mode: bool = False


def small_vision(**overrides: Any) -> dict[str, Any]:
    """A 2-layer, 32-wide vision tower on 32-pixel images in 8-pixel patches."""
    return {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
        **overrides,
    }
