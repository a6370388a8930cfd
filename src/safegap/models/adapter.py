"""The one interface every VLM family implements.

An adapter knows, for one family, where the language model's decoder layers are, which token ids
are image placeholders, and how to render the model's own chat template identically with and
without an image. Everything else in safegap (probe, steer, gap, train, eval) talks to models
only through this interface, so a new family is one new file with one ``@register_adapter`` class.

Two ways to build image inputs, chosen per family:

* the family's processor expands the image placeholder (LLaVA and most others): the default;
* ``expands_image_tokens = True``: the processor cannot be built without torchvision, so the
  adapter runs the image processor alone and writes the expanded placeholder text itself
  (:meth:`VLMAdapter.image_token_text`). The same code path runs with and without torchvision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn
from transformers import AutoModelForImageTextToText, BatchFeature, PreTrainedModel

from safegap.models import hub
from safegap.models.hub import ProcessorParts
from safegap.models.preprocess import with_chunked_images
from safegap.models.rows import PER_TOKEN_KEYS, ImagesArg, left_pad, per_row_images

ADAPTERS: dict[str, type[VLMAdapter]] = {}


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


class VLMAdapter:
    """Family adapter. Subclasses set the class attributes and override what differs."""

    family: ClassVar[str] = "generic"
    model_types: ClassVar[tuple[str, ...]] = ()
    #: Dotted path from the ``*ForConditionalGeneration`` object to the decoder ``ModuleList``.
    layers_path: ClassVar[str] = "model.language_model.layers"
    #: Dotted path to the language model's final norm (for the logit lens).
    final_norm_path: ClassVar[str] = "model.language_model.norm"
    #: Tokens that mark image positions in ``input_ids`` (they carry image features).
    image_token_names: ClassVar[tuple[str, ...]] = ("<image>",)
    #: Tokens that frame or separate image tokens but carry text embeddings (begin/end of image,
    #: row breaks, tile markers); part of the image span, not of :meth:`image_token_mask`.
    image_wrapper_token_names: ClassVar[tuple[str, ...]] = ()
    #: Whether a batch may mix rows with and without an image.
    supports_mixed_batches: ClassVar[bool] = True
    #: Whether the chat template has a system role (else ``system=`` is an error).
    supports_system: ClassVar[bool] = True
    #: True where the adapter expands the image placeholder itself (processor needs torchvision).
    expands_image_tokens: ClassVar[bool] = False
    #: The text the chat template writes for one image (what :meth:`image_token_text` replaces).
    image_placeholder: ClassVar[str] = "<image>"
    #: Render text-only prompts as the image prompt minus ``image_placeholder``, for templates that
    #: change the surrounding text when an image is present (Idefics3/SmolVLM: ``User:`` vs ``User: ``).
    text_only_strips_placeholder: ClassVar[bool] = False
    #: Keys the image processor returns that the model's forward does not take.
    drop_input_keys: ClassVar[tuple[str, ...]] = ()
    #: Whether the model takes images at all (False: a text-only causal LM, see
    #: :mod:`safegap.models.causal_lm`; image rows are then an error).
    takes_images: ClassVar[bool] = True

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
        #: The processor inputs are built with: ``processor`` with its image processor spread over
        #: CPU cores (:mod:`safegap.models.preprocess`; same outputs, ``processor`` untouched).
        self.encoder: Any = with_chunked_images(processor)
        self._explicit_layers_path = layers_path is not None
        self._layers_path = layers_path or self.layers_path
        self._layers = self._find_layers()

    @classmethod
    def load_model(
        cls,
        name_or_path: str,
        dtype: torch.dtype | None = None,
        trust_remote_code: bool = False,
        gguf_file: str | None = None,
        device_map: torch.device | None = None,
    ) -> PreTrainedModel:
        """The model, with ``AutoModelForImageTextToText`` (text-only families override this);
        ``device_map``: where accelerate places the weights as they load (None: the CPU)."""
        if gguf_file is not None:
            raise ValueError(
                f"{name_or_path}/{gguf_file}: GGUF files load only for text-only causal LMs "
                f"(transformers reads GGUF for text architectures); {cls.family} is a VLM family"
            )
        return hub.load_pretrained(
            AutoModelForImageTextToText, name_or_path, dtype, trust_remote_code, device_map
        )

    @classmethod
    def load_processor(
        cls, name_or_path: str, trust_remote_code: bool = False, gguf_file: str | None = None
    ) -> tuple[Any, Any]:
        """``(processor, tokenizer)``; the processor is :class:`ProcessorParts` where the real one
        cannot be built here. The tokenizer is set to left padding for batched generation.
        ``gguf_file`` is for text-only families (:meth:`load_model` refuses it for VLMs)."""
        processor = hub.load_processor_or_parts(name_or_path, trust_remote_code)
        return processor, hub.left_padding(processor.tokenizer)

    @property
    def image_processor(self) -> Any:
        return getattr(self.encoder, "image_processor", None)

    @property
    def chat_template(self) -> str | None:
        return getattr(self.processor, "chat_template", None) or getattr(
            self.tokenizer, "chat_template", None
        )

    # -- structure --------------------------------------------------------------------------
    def _find_layers(self) -> nn.ModuleList:
        """The family's known path; else the decoder's ``layers``. Never guessed by counting."""
        try:
            layers = resolve_attr(self.model, self._layers_path)
        except AttributeError:
            decoder = self.model.get_decoder() if hasattr(self.model, "get_decoder") else None
            layers = getattr(decoder, "layers", None)
            if layers is None or self._explicit_layers_path:
                raise
        if not isinstance(layers, nn.ModuleList):
            raise TypeError(f"{self._layers_path!r} is a {type(layers).__name__}, not a ModuleList of layers")
        expected = getattr(self.text_config, "num_hidden_layers", None)
        if expected is not None and len(layers) != int(expected):
            raise ValueError(
                f"{self._layers_path!r} holds {len(layers)} layers but the text config says {expected}; "
                "this is not the language model's decoder (pass layers_path= to the right one)"
            )
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

    def skipped_layers(self, batch: Mapping[str, Any]) -> frozenset[int]:
        """Decoder layers the model does not run for ``batch`` (their hooks never fire)."""
        return frozenset()

    def final_norm(self) -> nn.Module:
        """The language model's final norm, applied before the output head (logit lens)."""
        return resolve_attr(self.model, self.final_norm_path)  # type: ignore[no-any-return]

    def output_head(self) -> nn.Module:
        head = self.model.get_output_embeddings()
        if head is None:
            raise AttributeError(f"{type(self.model).__name__} has no output head")
        return head  # type: ignore[no-any-return]

    # -- image tokens -----------------------------------------------------------------------
    def _token_ids(self, names: Sequence[str]) -> list[int]:
        ids: list[int] = []
        for name in names:
            tid = self.tokenizer.convert_tokens_to_ids(name)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id and tid not in ids:
                ids.append(tid)
        return ids

    @property
    def image_token_ids(self) -> tuple[int, ...]:
        ids: list[int] = []
        config_id = getattr(self.model.config, "image_token_id", None)
        if config_id is None:
            config_id = getattr(self.model.config, "image_token_index", None)
        if config_id is not None:
            ids.append(int(config_id))
        ids += [tid for tid in self._token_ids(self.image_token_names) if tid not in ids]
        if not ids:
            raise ValueError(f"cannot determine the image token id for family {self.family}")
        return tuple(ids)

    @property
    def image_wrapper_token_ids(self) -> tuple[int, ...]:
        """Ids of the family's begin/end-of-image and separator tokens (may be empty)."""
        return tuple(self._token_ids(self.image_wrapper_token_names))

    def image_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Boolean mask, True where ``input_ids`` holds an image placeholder token."""
        ids = torch.tensor(self.image_token_ids, device=input_ids.device)
        return torch.isin(input_ids, ids)

    # -- prompts ----------------------------------------------------------------------------
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
        if system and not self.supports_system:
            raise ValueError(f"family {self.family} has no system role; put the instruction in the text")
        if not has_image and self.text_only_strips_placeholder:
            with_image = self.render(text, True, system)
            if with_image.count(self.image_placeholder) != 1:
                raise ValueError(f"{self.family} template did not write one {self.image_placeholder!r}")
            return with_image.replace(self.image_placeholder, "")
        template = self.chat_template
        if template is None:
            raise ValueError(f"{self.family} checkpoint has no chat template (tokenizer or processor)")
        return str(
            self.tokenizer.apply_chat_template(
                self.messages(text, has_image, system),
                chat_template=template,
                add_generation_prompt=True,
                tokenize=False,
            )
        )

    # -- inputs -----------------------------------------------------------------------------
    def build_inputs(
        self, texts: Sequence[str], images: ImagesArg = None, system: str | None = None
    ) -> BatchFeature:
        """Left-padded model inputs for ``texts`` with one image (or None) per row.

        Image rows are tokenized as the family's processor does. A text-only row is its image row
        minus the image span: the template text around the image is tokenized in two pieces, split
        where the image was, so that a word next to the image is not merged with its neighbour in
        one row and split in the other (``"USER: <image>\\nhi"`` vs ``"USER: hi"``).
        """
        texts = list(texts)
        rows = per_row_images(images, len(texts))
        self._check_mixed(rows)
        with_image = [i for i, img in enumerate(rows) if img is not None]
        per_row: list[dict[str, torch.Tensor]] = [
            {} if img is not None else {"input_ids": torch.tensor(self.text_only_ids(text, system))}
            for text, img in zip(texts, rows, strict=True)
        ]
        image_inputs: dict[str, Any] = {}
        if with_image:
            present = [img for img in rows if img is not None]
            encoded = self._encode_image_rows([texts[i] for i in with_image], present, system)
            keep = encoded["attention_mask"].bool()
            for j, i in enumerate(with_image):
                per_row[i] = {k: encoded[k][j][keep[j]] for k in PER_TOKEN_KEYS if k in encoded}
            # Image inputs are indexed by image, not by row: the model scatters the features into
            # the image tokens in order, so text-only rows need no slot.
            image_inputs = {k: v for k, v in encoded.items() if k not in PER_TOKEN_KEYS}
        for key in (*self.drop_input_keys, "labels"):
            image_inputs.pop(key, None)
        return self.finish_inputs(
            BatchFeature({**left_pad(per_row, self.tokenizer.pad_token_id), **image_inputs})
        )

    def text_only_ids(self, text: str, system: str | None = None) -> list[int]:
        """Token ids of the text-only prompt, split where the image prompt has its image."""
        plain = self.render(text, False, system)
        pictured = self.render(text, True, system)
        marker = self.image_token_names[0]
        marker_id = self.tokenizer.convert_tokens_to_ids(marker)
        if not isinstance(marker_id, int) or marker_id == self.tokenizer.unk_token_id:
            return list(
                self.tokenizer(plain, add_special_tokens=self._add_special_tokens([plain]))["input_ids"]
            )
        split = self._image_split(plain, pictured)
        marked = plain[:split] + marker + plain[split:]
        ids = self.tokenizer(marked, add_special_tokens=self._add_special_tokens([marked]))["input_ids"]
        if list(ids).count(marker_id) != 1:
            raise ValueError(
                f"text-only prompt for {self.family} contains the image token {marker!r}: {text!r}"
            )
        return [int(t) for t in ids if t != marker_id]

    def _image_split(self, plain: str, pictured: str) -> int:
        """Where in ``plain`` the image prompt ``pictured`` has its extra chunk (the image)."""
        extra = len(pictured) - len(plain)
        last = 0
        while last < len(plain) and plain[last] == pictured[last]:
            last += 1
        common_suffix = 0
        while common_suffix < len(plain) and plain[-1 - common_suffix] == pictured[-1 - common_suffix]:
            common_suffix += 1
        first = len(plain) - common_suffix
        if extra <= 0 or first > last:
            raise ValueError(
                f"{self.family} chat template changes more than the image placeholder when an image is "
                f"added: {pictured!r} vs {plain!r}"
            )
        # Every split in [first, last] removes one chunk; take the one whose chunk holds the
        # placeholder (``<image><bos>`` vs ``<bos>`` also "splits" after the "<").
        return next(
            (p for p in range(first, last + 1) if self.image_placeholder in pictured[p : p + extra]), last
        )

    def _encode_image_rows(self, texts: list[str], images: list[Image.Image], system: str | None) -> Any:
        """Padded inputs for rows that all have an image (processor, or our own expansion)."""
        prompts = [self.render(t, True, system) for t in texts]
        if not self.expands_image_tokens:
            if isinstance(self.processor, ProcessorParts):
                raise ValueError(
                    f"the {self.family} processor could not be loaded, so images cannot be encoded"
                )
            return self.encoder(
                text=prompts,
                images=self._processor_images(list(images)),
                return_tensors="pt",
                padding=True,
                add_special_tokens=self._add_special_tokens(prompts),
            )
        image_inputs = self.process_images(images)
        expanded = [self._expand_one(prompt, image_inputs, k) for k, prompt in enumerate(prompts)]
        encoded = self.tokenizer(
            expanded, return_tensors="pt", padding=True, add_special_tokens=self._add_special_tokens(expanded)
        )
        return {**encoded, **image_inputs}

    def _add_special_tokens(self, prompts: list[str]) -> bool:
        """Let the tokenizer add BOS only where the template did not write it (LLaVA-1.5's does not;
        Gemma's, Llama-3's and Mistral's do), as the family's processor would."""
        bos = self.tokenizer.bos_token
        return not (bos and any(bos in p for p in prompts))

    def _expand_one(self, prompt: str, image_inputs: Any, index: int) -> str:
        if self.image_placeholder not in prompt:
            raise ValueError(f"{self.family} prompt has no {self.image_placeholder!r} to expand: {prompt!r}")
        return prompt.replace(self.image_placeholder, self.image_token_text(image_inputs, index), 1)

    def process_images(self, images: list[Image.Image]) -> BatchFeature:
        """Image-processor outputs for the images present (``expands_image_tokens`` families)."""
        if self.image_processor is None:
            raise ValueError(f"{self.family} checkpoint has no image processor")
        return self.image_processor(images=images, return_tensors="pt")  # type: ignore[no-any-return]

    def image_token_text(self, image_inputs: Any, index: int) -> str:
        """The expanded placeholder text for image ``index`` (``expands_image_tokens`` families)."""
        raise NotImplementedError(f"{type(self).__name__} does not expand image tokens itself")

    def finish_inputs(self, batch: BatchFeature) -> BatchFeature:
        """Add the extra tensors the family's forward needs (none by default)."""
        return batch

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
