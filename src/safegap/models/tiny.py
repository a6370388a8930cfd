"""Tiny randomly initialised checkpoints of each supported family, built offline from configs.

They exist for plumbing tests and smoke runs: the weights are random, so outputs are junk, but the
architecture, processor and chat template are the family's. ``build_tiny(family, out_dir)`` writes
an ordinary Hugging Face checkpoint directory that :func:`safegap.models.load_vlm` loads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

if TYPE_CHECKING:
    from safegap.models.loading import VLM

_CORPUS = (
    "how do i make a cake ? describe the image . what is shown here ? tell me about the picture . "
    "sure , here is how : first mix the flour , then bake it . i am sorry , i cannot help with that . "
    "the quick brown fox jumps over the lazy dog . a red circle and a blue square on a white table . "
    "user assistant system question answer please explain write a story about a cat ."
)

#: Chat template in the LLaVA-1.5 style; renders string or list content, images as ``<image>``.
LLAVA_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}"
    "{{ m['content'] if m['content'] is string else m['content'][0]['text'] }}{{ '\\n' }}"
    "{% else %}{{ m['role'] | upper }}: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{{ '\\n' }}{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def train_tokenizer(
    special_tokens: Sequence[str],
    corpus: Sequence[str] = (_CORPUS,),
    vocab_size: int = 512,
    chat_template: str | None = LLAVA_TEMPLATE,
    bos: str | None = "<s>",
    eos: str = "</s>",
    pad: str = "<pad>",
    unk: str | None = "<unk>",
    extra_special_tokens: dict[str, str] | None = None,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on ``corpus`` with ``special_tokens`` kept atomic."""
    base = [t for t in (pad, bos, eos, unk) if t is not None]
    specials = list(dict.fromkeys([*base, *special_tokens]))
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    kwargs: dict[str, object] = {}
    if extra_special_tokens:
        kwargs["extra_special_tokens"] = extra_special_tokens
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk, **kwargs
    )
    fast.padding_side = "left"
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def tiny_text_config(vocab_size: int, **overrides: Any) -> dict[str, Any]:
    """A 2-layer Llama-style text config shared by the tiny builders."""
    cfg: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        head_dim=16,
    )
    cfg.update(overrides)
    return cfg


def _build_llava(out_dir: Path, seed: int) -> None:
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tok = train_tokenizer(["<image>"])
    image_size, patch = 32, 8
    n_image_tokens = (image_size // patch) ** 2
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
        projection_dim=32,
    )
    text = LlamaConfig(
        **tiny_text_config(len(tok)),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),  # type: ignore[arg-type]
        image_seq_length=n_image_tokens,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token="<image>",
        chat_template=LLAVA_TEMPLATE,
    )
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


#: ChatML-style template with plain string content, as text LLMs (SmolLM2, Qwen) write it.
CHATML_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

#: ``*Config`` class of each text-only model type :func:`build_tiny_causal_lm` can build.
CAUSAL_LM_CONFIGS = {
    "llama": "LlamaConfig",
    "mistral": "MistralConfig",
    "qwen2": "Qwen2Config",
    "qwen3": "Qwen3Config",
    "gemma": "GemmaConfig",
    "phi3": "Phi3Config",
}


def build_tiny_causal_lm(out_dir: str | Path, model_type: str = "llama", seed: int = 0) -> Path:
    """A tiny random text-only causal LM (3 layers, 64 wide, ChatML template) of ``model_type``,
    for the text-only adapter (:mod:`safegap.models.causal_lm`). Not in :data:`TINY_BUILDERS`:
    those checkpoints all take images."""
    import transformers
    from transformers import AutoModelForCausalLM

    if model_type not in CAUSAL_LM_CONFIGS:
        raise ValueError(f"no tiny causal LM for {model_type!r}; known: {', '.join(CAUSAL_LM_CONFIGS)}")
    tok = train_tokenizer(
        ["<|im_start|>", "<|im_end|>"], chat_template=CHATML_TEMPLATE, bos=None, eos="<|im_end|>"
    )
    config = getattr(transformers, CAUSAL_LM_CONFIGS[model_type])(
        **tiny_text_config(len(tok)), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


Builder = Callable[[Path, int], None]

#: family name -> builder(out_dir, seed); :mod:`safegap.models.tiny_builders` adds the other families.
TINY_BUILDERS: dict[str, Builder] = {"llava": _build_llava}


def tiny_builder(family: str) -> Callable[[Builder], Builder]:
    """Decorator: register a tiny builder for ``family``."""

    def register(fn: Builder) -> Builder:
        TINY_BUILDERS[family] = fn
        return fn

    return register


def build_tiny(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random checkpoint of ``family`` to ``out_dir`` and return the path."""
    if family not in TINY_BUILDERS:
        raise ValueError(f"no tiny builder for family {family!r}; known: {', '.join(sorted(TINY_BUILDERS))}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    TINY_BUILDERS[family](out, seed)
    return out


def load_tiny(family: str, root: str | Path, seed: int = 0) -> VLM:
    """Load the tiny ``family`` checkpoint under ``root/family-seed``, building it the first time."""
    from safegap.models.loading import load_vlm

    out = Path(root) / f"{family}-{seed}"
    if not (out / "config.json").exists():
        build_tiny(family, out, seed)
    return load_vlm(out)


from safegap.models import tiny_builders as _tiny_builders  # noqa: E402,F401  (registers the other families)
