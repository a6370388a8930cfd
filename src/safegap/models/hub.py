"""Loading a family's parts from a checkpoint: the model (weights placed by accelerate's
``device_map`` when a device is given), and the processor or, where it cannot be built here, its
parts. Weights come from ``*.safetensors`` only unless the user opts in (:mod:`safegap.models.checks`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, PreTrainedModel

from safegap.models.checks import use_safetensors


@dataclass
class ProcessorParts:
    """Stands in for a processor that cannot be built here (it needs torchvision): the tokenizer
    and image processor loaded separately; the adapter expands image tokens itself."""

    tokenizer: Any
    image_processor: Any
    chat_template: str | None = None


def load_pretrained(
    auto_class: Any,
    name_or_path: str,
    dtype: torch.dtype | None,
    trust_remote_code: bool,
    device_map: torch.device | None = None,
    **extra: Any,
) -> PreTrainedModel:
    """``auto_class.from_pretrained`` as every family loads: the checkpoint's dtype unless one is
    given, remote code only on request, safetensors only unless opted out (``extra`` may replace
    that with a ``gguf_file``). With ``device_map`` the weights are loaded straight onto that
    device (accelerate), never first materialised on the CPU; without it they stay on the CPU."""
    kwargs: dict[str, Any] = {"use_safetensors": use_safetensors(), **extra}
    if device_map is not None:
        kwargs["device_map"] = device_map
    return auto_class.from_pretrained(  # type: ignore[no-any-return]
        name_or_path, dtype=dtype or "auto", trust_remote_code=trust_remote_code, **kwargs
    )


def load_processor_or_parts(name_or_path: str, trust_remote_code: bool) -> Any:
    """The checkpoint's multimodal processor, or :class:`ProcessorParts` where it cannot be built."""
    try:
        processor: Any = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        if not hasattr(processor, "tokenizer"):  # a bare tokenizer came back
            raise TypeError("not a multimodal processor")
        return processor
    except (AttributeError, ImportError, TypeError, ValueError, OSError):
        pass
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    try:
        image_processor = AutoImageProcessor.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError):
        image_processor = None
    template = getattr(tokenizer, "chat_template", None) or saved_chat_template(name_or_path)
    return ProcessorParts(tokenizer, image_processor, template)


def left_padding(tokenizer: Any) -> Any:
    """``tokenizer`` set up for batched generation: left padding, pad = eos where it has none."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def saved_chat_template(name_or_path: str) -> str | None:
    """The processor's chat template file of a checkpoint (read when only the tokenizer loads)."""
    from transformers.utils import cached_file

    for filename in ("chat_template.jinja", "chat_template.json"):
        try:
            path = cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False)
        except (OSError, ValueError):
            path = None
        if path is None:
            continue
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        return str(json.loads(text)["chat_template"]) if filename.endswith(".json") else text
    return None
