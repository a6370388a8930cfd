"""One generic builder: any :class:`~safegap.testing.families.TinyFamily` row to a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from safegap.models.tokenizer import train_tokenizer
from safegap.testing.families import CAUSAL_LM_CONFIGS, FAMILIES, causal_lm_family
from safegap.testing.spec import TinyFamily

if TYPE_CHECKING:
    from safegap.models.loading import VLM


def tiny_text_config(vocab_size: int, **overrides: Any) -> dict[str, Any]:
    """A 3-layer, 64-wide Llama-style text config shared by every tiny family."""
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


def _transformers(name: str) -> Any:
    import transformers

    return getattr(transformers, name)


def _token_id(tok: Any, token: str) -> int:
    """The id of one special token (the tokenizer keeps every special token atomic)."""
    return int(tok.convert_tokens_to_ids(token))


def _text_config(family: TinyFamily, tok: Any) -> Any:
    spec = family.text
    kwargs = tiny_text_config(len(tok))
    kwargs.update(spec.overrides)  # a benchmark's own vocabulary size wins too
    for key in spec.drop:
        kwargs.pop(key)
    kwargs.update({f"{role}_token_id": getattr(tok, f"{role}_token_id") for role in spec.ids})
    if spec.cls is None:
        return kwargs
    config = _transformers(spec.cls)(**kwargs)
    return config.to_dict() if spec.as_dict else config


def _image_parts(family: TinyFamily, tok: Any) -> list[Any]:
    """What is saved beside the model: the processor, or the image processor alone."""
    if family.image_processor is None:
        return []
    name, kwargs = family.image_processor
    image_processor = _transformers(name)(**kwargs)
    if family.processor is None:
        return [image_processor]
    name, kwargs = family.processor
    processor = _transformers(name)(
        image_processor=image_processor, tokenizer=tok, chat_template=tok.chat_template, **kwargs
    )
    return [processor]


def build_family(family: TinyFamily, out_dir: str | Path, seed: int = 0) -> Path:
    """Write the checkpoint ``family`` describes to ``out_dir``; the weights are those of
    ``torch.manual_seed(seed)`` followed by the model's own initialisation."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(**family.tokenizer)
    kwargs: dict[str, Any] = {
        **family.options,
        **{key: _token_id(tok, token) for key, token in family.tokens.items()},
    }
    text = _text_config(family, tok)
    if family.vision is None:
        config = text
    else:
        vision_cls, vision_kwargs = family.vision
        vision = vision_kwargs if vision_cls is None else _transformers(vision_cls)(**vision_kwargs)
        config = _transformers(family.config)(text_config=text, vision_config=vision, **kwargs)
    parts = _image_parts(family, tok)
    torch.manual_seed(seed)
    model_cls = _transformers(family.model)
    model = model_cls.from_config(config) if family.vision is None else model_cls(config)
    if family.eval_mode:
        model.eval()
    if family.init is not None:
        family.init(model)
    for role in family.generation_ids:
        setattr(model.generation_config, f"{role}_token_id", getattr(tok, f"{role}_token_id"))
    model.save_pretrained(out)
    if family.save_tokenizer or not parts:
        tok.save_pretrained(out)
    for part in parts:
        part.save_pretrained(out)
    return out


def build_tiny(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random checkpoint of ``family`` (a key of :data:`FAMILIES`) to ``out_dir``."""
    if family not in FAMILIES:
        raise ValueError(f"no tiny builder for family {family!r}; known: {', '.join(sorted(FAMILIES))}")
    return build_family(FAMILIES[family], out_dir, seed)


def build_tiny_causal_lm(out_dir: str | Path, model_type: str = "llama", seed: int = 0) -> Path:
    """A tiny random text-only causal LM of ``model_type`` (3 layers, 64 wide, ChatML template),
    for the text-only adapter (:mod:`safegap.models.causal_lm`). Not in :data:`FAMILIES`: those
    checkpoints all take images."""
    if model_type not in CAUSAL_LM_CONFIGS:
        raise ValueError(f"no tiny causal LM for {model_type!r}; known: {', '.join(CAUSAL_LM_CONFIGS)}")
    return build_family(causal_lm_family(CAUSAL_LM_CONFIGS[model_type]), out_dir, seed)


def load_tiny(family: str, root: str | Path, seed: int = 0) -> VLM:
    """Load the tiny ``family`` checkpoint under ``root/family-seed``, building it the first time."""
    from safegap.models.loading import load_vlm

    out = Path(root) / f"{family}-{seed}"
    if not (out / "config.json").exists():
        build_tiny(family, out, seed)
    return load_vlm(out)
