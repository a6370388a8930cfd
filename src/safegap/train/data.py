"""Training data in the LLaVA conversation JSONL convention, encoded with the model's own template.

One JSON object per line::

    {"id": "0001", "image": "images/0001.png",
     "conversations": [{"from": "human", "value": "<image>\\nWhat is shown?"},
                       {"from": "gpt", "value": "A red circle."}],
     "caption": "a red circle on a white table",      # optional, for TGA
     "retrieved_text": "circles are round shapes"}    # optional, for TGA's ranking term

``image`` is optional (text-only rows), relative to ``image_folder`` or else to the JSONL's own
directory. ``<image>`` may appear once, in the first human turn; the image is placed where the
family's adapter puts it (before the text). ``from`` accepts ``human``/``user`` and
``gpt``/``assistant``. A bad row fails before training with ``file:line: what is wrong``.

Each row is rendered with the chat template exactly as :meth:`VLMAdapter.render` renders prompts
at inference (same system prompt, same generation prompt), so a trained model sees at test time
the text it was trained on. Labels cover the assistant turns only (the template's end-of-turn
text and a final EOS included). A retrieved text is written before the image as
``Retrieved text: {text}`` in the first user turn, as TGA's authors do.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import BatchFeature

from safegap.train.tga import CaptionTemplate, encode_caption, pad_captions

IGNORE_INDEX = -100
RETRIEVED_PREFIX = "Retrieved text: "
IMAGE_MARK = "<image>"
_HUMAN = ("human", "user")
_GPT = ("gpt", "assistant")
#: Batch entries that are not model inputs.
AUX_KEYS = frozenset(
    {"labels", "retrieved_mask", "caption_input_ids", "caption_attention_mask", "caption_token_mask"}
)


class DataError(ValueError):
    """A bad training row; the message starts with ``file:line:``."""


@dataclass(frozen=True)
class Example:
    source: str
    id: str
    image: Path | None
    turns: tuple[tuple[str, str], ...]
    caption: str | None = None
    retrieved_text: str | None = None


def _optional_text(row: dict[str, Any], key: str, where: str) -> str | None:
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: '{key}' must be a non-empty string")
    return value


def _parse_row(row: Any, where: str, image_root: Path) -> Example:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    conv = row.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise DataError(f"{where}: 'conversations' must be a non-empty list")
    if len(conv) % 2:
        raise DataError(f"{where}: 'conversations' must alternate human/gpt and end with gpt")
    turns: list[tuple[str, str]] = []
    n_marks = 0
    for k in range(0, len(conv), 2):
        pair = []
        for msg, allowed in ((conv[k], _HUMAN), (conv[k + 1], _GPT)):
            if not isinstance(msg, dict) or msg.get("from") not in allowed:
                got = msg.get("from") if isinstance(msg, dict) else msg
                raise DataError(
                    f"{where}: turn {conv.index(msg)} must be from {'/'.join(allowed)}, got {got!r}"
                )
            value = msg.get("value")
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{where}: turn {conv.index(msg)} has no text 'value'")
            pair.append(value)
        human, gpt = pair
        marks = human.count(IMAGE_MARK)
        if marks and k > 0:
            raise DataError(f"{where}: '<image>' may appear only in the first human turn")
        n_marks += marks
        turns.append((human.replace(IMAGE_MARK, "").strip(), gpt))
    image_field = row.get("image")
    image: Path | None = None
    if image_field is not None:
        if not isinstance(image_field, str) or not image_field:
            raise DataError(f"{where}: 'image' must be a path string")
        image = Path(image_field) if Path(image_field).is_absolute() else image_root / image_field
        if not image.is_file():
            raise DataError(f"{where}: image file {image} does not exist")
    if n_marks > 1:
        raise DataError(f"{where}: '<image>' appears {n_marks} times; one image per row is supported")
    if n_marks and image is None:
        raise DataError(f"{where}: the text has '<image>' but the row has no 'image'")
    if not turns[0][0]:
        raise DataError(f"{where}: the first human turn has no text besides '<image>'")
    return Example(
        source=where,
        id=str(row.get("id", where)),
        image=image,
        turns=tuple(turns),
        caption=_optional_text(row, "caption", where),
        retrieved_text=_optional_text(row, "retrieved_text", where),
    )


def read_conversations(path: str | Path, image_folder: str | Path | None = None) -> list[Example]:
    """Parse and validate every row; raises :class:`DataError` naming the file and line."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"training data {p} does not exist")
    root = Path(image_folder) if image_folder is not None else p.parent
    examples = []
    with p.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{p}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: invalid JSON ({exc.msg})") from None
            examples.append(_parse_row(row, where, root))
    if not examples:
        raise DataError(f"{p}: no training rows")
    return examples


@dataclass
class EncodedRow:
    input_ids: list[int]
    labels: list[int]
    retrieved: list[bool]
    image_inputs: dict[str, torch.Tensor] | None
    caption: tuple[list[int], list[bool]] | None


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class ConversationEncoder:
    """Turns :class:`Example` rows into token ids, labels and batches for one model's adapter."""

    def __init__(
        self,
        adapter: Any,
        system: str | None = None,
        max_length: int | None = None,
        with_captions: bool = False,
        caption_template: CaptionTemplate = "chat",
        append_eos: bool = True,
    ) -> None:
        self.adapter = adapter
        self.tokenizer = adapter.tokenizer
        self.system = system
        self.max_length = max_length
        self.with_captions = with_captions
        self.caption_template = caption_template
        self.append_eos = append_eos
        self.image_ids = set(adapter.image_token_ids)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.tokenizer.eos_token_id or 0)

    # -- text -------------------------------------------------------------------------------
    def _template(self) -> str:
        template = (
            getattr(self.adapter, "chat_template", None)
            or getattr(self.adapter.processor, "chat_template", None)
            or getattr(self.tokenizer, "chat_template", None)
        )
        if not template:
            raise ValueError(f"{self.adapter.family} checkpoint has no chat template")
        return str(template)

    def _render(self, messages: list[dict[str, Any]], generation_prompt: bool) -> str:
        return str(
            self.tokenizer.apply_chat_template(
                messages,
                chat_template=self._template(),
                add_generation_prompt=generation_prompt,
                tokenize=False,
            )
        )

    def _messages(self, ex: Example) -> list[dict[str, Any]]:
        has_image = ex.image is not None
        placeholder_only = not has_image and getattr(self.adapter, "text_only_strips_placeholder", False)
        msgs: list[dict[str, Any]] = self.adapter.messages(
            ex.turns[0][0], has_image or placeholder_only, self.system
        )
        if ex.retrieved_text is not None:
            msgs[-1]["content"].insert(
                0, {"type": "text", "text": f"{RETRIEVED_PREFIX}{ex.retrieved_text}\n"}
            )
        for k, (human, gpt) in enumerate(ex.turns):
            if k > 0:
                msgs.append({"role": "user", "content": [{"type": "text", "text": human}]})
            msgs.append({"role": "assistant", "content": [{"type": "text", "text": gpt}]})
        return msgs

    def render_with_spans(self, ex: Example) -> tuple[str, list[tuple[int, int]], tuple[int, int] | None]:
        """The full training text, the assistant spans (characters) and the retrieved-text span."""
        msgs = self._messages(ex)
        spans: list[tuple[int, int]] = []
        final = self._render(msgs, generation_prompt=False)
        for k, msg in enumerate(msgs):
            if msg["role"] != "assistant":
                continue
            prefix = self._render(msgs[:k], generation_prompt=True)
            full = self._render(msgs[: k + 1], generation_prompt=False)
            if not full.startswith(prefix) or not final.startswith(full):
                raise DataError(
                    f"{ex.source}: the {self.adapter.family} chat template does not render this "
                    "conversation as a prefix-stable sequence; cannot place the assistant labels"
                )
            spans.append((len(prefix), len(full)))
        placeholder = getattr(self.adapter, "image_placeholder", IMAGE_MARK)
        if ex.image is None and getattr(self.adapter, "text_only_strips_placeholder", False):
            cut = final.find(placeholder)
            final = final[:cut] + final[cut + len(placeholder) :]
            spans = [(s - len(placeholder), e - len(placeholder)) for s, e in spans]
        eos = self.tokenizer.eos_token
        if self.append_eos and eos and not final.endswith(eos):
            final += eos
            spans[-1] = (spans[-1][0], len(final))
        retrieved = None
        if ex.retrieved_text is not None:
            start = final.find(RETRIEVED_PREFIX + ex.retrieved_text)
            if start < 0:
                raise DataError(f"{ex.source}: the chat template changed the retrieved text")
            start += len(RETRIEVED_PREFIX)
            retrieved = (start, start + len(ex.retrieved_text))
        return final, spans, retrieved

    # -- tokens -----------------------------------------------------------------------------
    def _adds_special(self, text: str) -> bool:
        bos = self.tokenizer.bos_token
        return not (bos and bos in text)

    def _expanded(self, text: str, image: Image.Image) -> tuple[list[int], dict[str, torch.Tensor]]:
        """Ids with the image placeholder expanded, and the image tensors the model takes."""
        adapter = self.adapter
        if getattr(adapter, "expands_image_tokens", False):
            image_inputs = dict(adapter.process_images([image]))
            expanded = text.replace(adapter.image_placeholder, adapter.image_token_text(image_inputs, 0), 1)
            ids = list(self.tokenizer(expanded, add_special_tokens=self._adds_special(expanded))["input_ids"])
        else:
            enc = adapter.processor(
                text=[text], images=[image], return_tensors="pt", add_special_tokens=self._adds_special(text)
            )
            ids = enc["input_ids"][0].tolist()
            image_inputs = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
        for key in getattr(adapter, "drop_input_keys", ()):
            image_inputs.pop(key, None)
        return ids, {k: v for k, v in image_inputs.items() if isinstance(v, torch.Tensor)}

    def encode(self, ex: Example) -> EncodedRow:
        text, spans, retrieved_span = self.render_with_spans(ex)
        plain = self.tokenizer(text, add_special_tokens=self._adds_special(text), return_offsets_mapping=True)
        plain_ids = list(plain["input_ids"])
        offsets = [(s, e) for s, e in plain["offset_mapping"]]
        # A label belongs to tokens that start inside an assistant span (what the model generates
        # after the prompt); a retrieved-text token is any token overlapping the text (byte-level
        # BPE glues the leading space to the first word).
        labelled = [e > s and any(a <= s < b for a, b in spans) for s, e in offsets]
        in_retrieved = [
            retrieved_span is not None and e > s and s < retrieved_span[1] and e > retrieved_span[0]
            for s, e in offsets
        ]
        image_inputs = None
        ids = plain_ids
        position = list(range(len(plain_ids)))
        if ex.image is not None:
            try:
                with Image.open(ex.image) as img:
                    image = img.convert("RGB")
            except OSError as exc:
                raise DataError(f"{ex.source}: cannot read image {ex.image} ({exc})") from None
            ids, image_inputs = self._expanded(text, image)
            position = self._align(plain_ids, ids, labelled, in_retrieved, ex.source)
        labels = [IGNORE_INDEX] * len(ids)
        retrieved = [False] * len(ids)
        for i, pos in enumerate(position):
            if pos < 0:  # an unlabelled token replaced by the image expansion
                continue
            if labelled[i]:
                labels[pos] = ids[pos]
            retrieved[pos] = retrieved[pos] or in_retrieved[i]
        ids, labels, retrieved = self._truncate(ids, labels, retrieved, ex.source)
        caption = None
        if self.with_captions and ex.caption is not None:
            try:
                caption = encode_caption(self.adapter, ex.caption, self.caption_template)
            except ValueError as exc:
                raise DataError(f"{ex.source}: caption: {exc}") from None
        return EncodedRow(ids, labels, retrieved, image_inputs, caption)

    def _align(
        self, plain: list[int], expanded: list[int], labelled: list[bool], retrieved: list[bool], source: str
    ) -> list[int]:
        """Where each plain token sits in the expanded ids: the text before the image and after it
        is unchanged by the expansion, so a common prefix and suffix carry every label (-1: a
        token the expansion replaced, which must carry no label)."""
        head = _common_prefix(plain, expanded)
        tail = _common_prefix(plain[::-1], expanded[::-1])
        tail = min(tail, len(plain) - head, len(expanded) - head)
        shift = len(expanded) - len(plain)
        position = []
        for i in range(len(plain)):
            if i < head:
                position.append(i)
            elif i >= len(plain) - tail:
                position.append(i + shift)
            elif labelled[i] or retrieved[i]:
                raise DataError(f"{source}: cannot locate labelled tokens around the expanded image tokens")
            else:
                position.append(-1)
        return position

    def _truncate(
        self, ids: list[int], labels: list[int], retrieved: list[bool], source: str
    ) -> tuple[list[int], list[int], list[bool]]:
        if self.max_length is None or len(ids) <= self.max_length:
            if all(x == IGNORE_INDEX for x in labels):
                raise DataError(f"{source}: no assistant tokens to train on")
            return ids, labels, retrieved
        n = self.max_length
        if any(t in self.image_ids for t in ids[n:]):
            raise DataError(
                f"{source}: {len(ids)} tokens; truncating to max_length={n} would cut image tokens"
            )
        if all(x == IGNORE_INDEX for x in labels[:n]):
            raise DataError(f"{source}: no assistant tokens left after truncation to max_length={n}")
        return ids[:n], labels[:n], retrieved[:n]

    # -- batches ----------------------------------------------------------------------------
    def collate(self, rows: Sequence[EncodedRow]) -> dict[str, torch.Tensor]:
        """Right-padded batch: model inputs plus ``labels``, ``retrieved_mask`` and captions."""
        width = max(len(r.input_ids) for r in rows)
        batch_size = len(rows)
        input_ids = torch.full((batch_size, width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((batch_size, width), dtype=torch.long)
        labels = torch.full((batch_size, width), IGNORE_INDEX, dtype=torch.long)
        retrieved = torch.zeros((batch_size, width), dtype=torch.bool)
        for i, row in enumerate(rows):
            n = len(row.input_ids)
            input_ids[i, :n] = torch.tensor(row.input_ids)
            attention[i, :n] = 1
            labels[i, :n] = torch.tensor(row.labels)
            retrieved[i, :n] = torch.tensor(row.retrieved)
        batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention}
        with_images = [r.image_inputs for r in rows if r.image_inputs is not None]
        if with_images:
            keys = set(with_images[0])
            if any(set(x) != keys for x in with_images):
                raise ValueError("image rows of one batch returned different processor outputs")
            for key in sorted(keys):
                batch[key] = torch.cat([x[key] for x in with_images], dim=0)
        finish = getattr(self.adapter, "finish_inputs", None)
        if finish is not None:
            batch = dict(finish(BatchFeature(batch)))
        batch["labels"] = labels
        if retrieved.any():
            batch["retrieved_mask"] = retrieved
        if self.with_captions:
            batch.update(pad_captions([r.caption for r in rows], self.pad_id))
        return batch
