"""The one interface every VLM family implements.

An adapter knows, for one family, where the language model's decoder layers are, which token ids
are image placeholders, and how to render the model's own chat template identically with and
without an image. Everything else in safegap (probe, steer, gap, train, eval) talks to models
only through this interface, so a new family is one new file with one ``@register_adapter`` class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn
from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, BatchFeature, PreTrainedModel

#: Per-row images: ``None`` for an all-text batch, else one image (or ``None``) per row.
ImagesArg = Sequence[Image.Image | None] | None

ADAPTERS: dict[str, type[VLMAdapter]] = {}


@dataclass
class ProcessorParts:
    """Stands in for a processor that cannot be built here (it needs torchvision): the tokenizer
    and image processor loaded separately; the adapter expands image tokens itself."""

    tokenizer: Any
    image_processor: Any
    chat_template: str | None = None


def register_adapter(cls: type[VLMAdapter]) -> type[VLMAdapter]:
    """Class decorator: make ``cls`` the adapter for each of its ``model_types``."""
    for model_type in cls.model_types:
        ADAPTERS[model_type] = cls
    return cls


def resolve_attr(root: Any, dotted: str) -> Any:
    """``resolve_attr(model, "model.language_model.layers")`` or a clear error naming the path."""
    obj = root
    for part in dotted.split("."):
        if not hasattr(obj, part):
            raise AttributeError(f"{type(root).__name__} has no attribute path {dotted!r} (missing {part!r})")
        obj = getattr(obj, part)
    return obj


def per_row_images(images: ImagesArg, n_rows: int) -> list[Image.Image | None]:
    """Normalise the ``images`` argument to one entry per row, validating its length."""
    if images is None:
        return [None] * n_rows
    rows = list(images)
    if len(rows) != n_rows:
        raise ValueError(f"got {len(rows)} images for {n_rows} texts; pass one image (or None) per text")
    for i, img in enumerate(rows):
        if img is not None and not isinstance(img, Image.Image):
            raise TypeError(f"image {i} is a {type(img).__name__}, expected a PIL image or None")
    return [img.convert("RGB") if img is not None else None for img in rows]


class VLMAdapter:
    """Family adapter. Subclasses set the class attributes and override what differs.

    The default implementation fits processor-based families whose processor expands the image
    placeholder itself (LLaVA and most others); families whose processor cannot be built without
    torchvision override :meth:`build_inputs`.
    """

    family: ClassVar[str] = "generic"
    model_types: ClassVar[tuple[str, ...]] = ()
    #: Dotted path from the ``*ForConditionalGeneration`` object to the decoder ``ModuleList``.
    layers_path: ClassVar[str] = "model.language_model.layers"
    #: Dotted path to the language model's final norm (for the logit lens).
    final_norm_path: ClassVar[str] = "model.language_model.norm"
    #: Tokens that mark image positions in ``input_ids``.
    image_token_names: ClassVar[tuple[str, ...]] = ("<image>",)
    #: Whether a batch may mix rows with and without an image.
    supports_mixed_batches: ClassVar[bool] = True

    def __init__(
        self,
        model: PreTrainedModel,
        processor: Any,
        tokenizer: Any,
        layers_path: str | None = None,
    ) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = tokenizer
        self._layers_path = layers_path or self.layers_path
        self._layers = self._find_layers()

    @classmethod
    def load_processor(cls, name_or_path: str, trust_remote_code: bool = False) -> tuple[Any, Any]:
        """``(processor, tokenizer)``; the processor is :class:`ProcessorParts` where the real one
        cannot be built here. The tokenizer is set to left padding for batched generation."""
        try:
            processor: Any = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        except (AttributeError, ImportError, TypeError, ValueError, OSError):
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
            try:
                image_processor = AutoImageProcessor.from_pretrained(
                    name_or_path, trust_remote_code=trust_remote_code
                )
            except (OSError, ValueError):
                image_processor = None
            processor = ProcessorParts(tokenizer, image_processor, getattr(tokenizer, "chat_template", None))
        tokenizer = processor.tokenizer
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return processor, tokenizer

    @property
    def image_processor(self) -> Any:
        return getattr(self.processor, "image_processor", None)

    # -- structure --------------------------------------------------------------------------
    def _find_layers(self) -> nn.ModuleList:
        try:
            layers = resolve_attr(self.model, self._layers_path)
        except AttributeError:
            decoder = self.model.get_decoder() if hasattr(self.model, "get_decoder") else None
            layers = getattr(decoder, "layers", None)
            if layers is None:
                raise
        if not isinstance(layers, nn.ModuleList):
            raise TypeError(f"{self._layers_path!r} is a {type(layers).__name__}, not a ModuleList of layers")
        return layers

    @property
    def decoder_layers(self) -> nn.ModuleList:
        """The language model's decoder layers, outputs = residual stream."""
        return self._layers

    @property
    def text_config(self) -> Any:
        return self.model.config.get_text_config()

    @property
    def num_layers(self) -> int:
        return len(self._layers)

    @property
    def hidden_size(self) -> int:
        return int(self.text_config.hidden_size)

    def final_norm(self) -> nn.Module:
        """The language model's final norm, applied before the output head (logit lens)."""
        return resolve_attr(self.model, self.final_norm_path)  # type: ignore[no-any-return]

    def output_head(self) -> nn.Module:
        head = self.model.get_output_embeddings()
        if head is None:
            raise AttributeError(f"{type(self.model).__name__} has no output head")
        return head  # type: ignore[no-any-return]

    # -- image tokens -----------------------------------------------------------------------
    @property
    def image_token_ids(self) -> tuple[int, ...]:
        ids: list[int] = []
        config_id = getattr(self.model.config, "image_token_id", None)
        if config_id is None:
            config_id = getattr(self.model.config, "image_token_index", None)
        if config_id is not None:
            ids.append(int(config_id))
        for name in self.image_token_names:
            tid = self.tokenizer.convert_tokens_to_ids(name)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id and tid not in ids:
                ids.append(tid)
        if not ids:
            raise ValueError(f"cannot determine the image token id for family {self.family}")
        return tuple(ids)

    def image_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Boolean mask, True where ``input_ids`` holds an image placeholder token."""
        ids = torch.tensor(self.image_token_ids, device=input_ids.device)
        return torch.isin(input_ids, ids)

    # -- inputs -----------------------------------------------------------------------------
    def messages(self, text: str, has_image: bool, system: str | None = None) -> list[dict[str, Any]]:
        """Chat messages in the HF multimodal convention; the image comes before the text."""
        content: list[dict[str, Any]] = [{"type": "image"}] if has_image else []
        content.append({"type": "text", "text": text})
        msgs: list[dict[str, Any]] = []
        if system:
            msgs.append({"role": "system", "content": [{"type": "text", "text": system}]})
        msgs.append({"role": "user", "content": content})
        return msgs

    def render(self, text: str, has_image: bool, system: str | None = None) -> str:
        """The prompt string from the model's own chat template, generation prompt included."""
        templater = self.processor if getattr(self.processor, "chat_template", None) else self.tokenizer
        return str(
            templater.apply_chat_template(
                self.messages(text, has_image, system), add_generation_prompt=True, tokenize=False
            )
        )

    def build_inputs(
        self, texts: Sequence[str], images: ImagesArg = None, system: str | None = None
    ) -> BatchFeature:
        """Left-padded model inputs for ``texts`` with one image (or None) per row."""
        texts = list(texts)
        rows = per_row_images(images, len(texts))
        prompts = [self.render(t, img is not None, system) for t, img in zip(texts, rows, strict=True)]
        present = [img for img in rows if img is not None]
        self._check_mixed(rows)
        if not present:
            enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            return BatchFeature(dict(enc))
        return self.processor(
            text=prompts,
            images=self._processor_images(rows),
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )

    def _processor_images(self, rows: list[Image.Image | None]) -> Any:
        """The ``images`` argument the processor expects (flat list by default)."""
        return [img for img in rows if img is not None]

    def _check_mixed(self, rows: list[Image.Image | None]) -> None:
        n_img = sum(img is not None for img in rows)
        if 0 < n_img < len(rows) and not self.supports_mixed_batches:
            raise ValueError(
                f"family {self.family} cannot mix text-only and image rows in one batch; split the batch"
            )

    def describe(self) -> dict[str, Any]:
        """Short facts for ``safegap info`` and provenance records."""
        return {
            "family": self.family,
            "architecture": type(self.model).__name__,
            "model_type": self.model.config.model_type,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "image_token_ids": list(self.image_token_ids),
            "layers_path": self._layers_path,
        }
