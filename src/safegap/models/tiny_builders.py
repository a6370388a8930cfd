"""Tiny random checkpoints for every family except LLaVA-1.5 (which lives in :mod:`safegap.models.tiny`).

Each builder writes a config with a 3-layer, 64-wide text model and a 2-layer vision tower, a
locally trained tokenizer with the family's special tokens, a chat template in the family's style,
and the image processor (plus the processor where it can be built without torchvision).
Image sizes are kept small so that an image costs 4 to 40 tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from safegap.models.tiny import tiny_builder, tiny_text_config, train_tokenizer


def _content(image: str) -> str:
    """Jinja for one message's content (string or list); ``image`` is what an image becomes."""
    return (
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
        f"{{% if c['type'] == 'image' %}}{{{{ {image!r} }}}}{{% else %}}{{{{ c['text'] }}}}{{% endif %}}"
        "{% endfor %}{% endif %}"
    )


def chatml_template(image: str, default_system: str | None = None, role_sep: str = "\n") -> str:
    """ChatML (``<|im_start|>role ... <|im_end|>``) as Qwen, LLaVA-OneVision and InternVL use it."""
    default = (
        "{% if messages[0]['role'] != 'system' %}<|im_start|>system\n"
        + default_system
        + "<|im_end|>\n{% endif %}"
        if default_system
        else ""
    )
    return (
        default
        + "{% for m in messages %}<|im_start|>{{ m['role'] }}"
        + role_sep.replace("\n", "{{ '\\n' }}")
        + _content(image)
        + "<|im_end|>{{ '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant{{ '\\n' }}{% endif %}"
    )


def _finish(out_dir: Path, model: Any, tok: Any, *parts: Any) -> None:
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    for part in parts:
        part.save_pretrained(out_dir)


def _ids(tok: Any, *names: str) -> list[int]:
    return [int(tok.convert_tokens_to_ids(n)) for n in names]


# -- Qwen2-VL, Qwen2.5-VL, Qwen3-VL ---------------------------------------------------------------
_QWEN_SPECIALS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
_QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


def _qwen_tokenizer(default_system: str | None) -> Any:
    return train_tokenizer(
        _QWEN_SPECIALS,
        chat_template=chatml_template(_QWEN_IMAGE, default_system),
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        unk=None,
    )


def _qwen_token_kwargs(tok: Any) -> dict[str, Any]:
    start, end, image, video = _ids(
        tok, "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"
    )
    return dict(
        image_token_id=image, video_token_id=video, vision_start_token_id=start, vision_end_token_id=end
    )


def _qwen_image_processor(patch: int) -> Any:
    from transformers import Qwen2VLImageProcessor

    side = patch * 2 * 3  # at most 3x3 merged patches
    return Qwen2VLImageProcessor(
        patch_size=patch,
        merge_size=2,
        temporal_patch_size=2,
        min_pixels=(patch * 4) ** 2,
        max_pixels=side * side,
        size={"shortest_edge": (patch * 4) ** 2, "longest_edge": side * side},
    )


@tiny_builder("qwen2_vl")
def build_qwen2_vl(out_dir: Path, seed: int) -> None:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tok = _qwen_tokenizer("You are a helpful assistant.")
    text = tiny_text_config(len(tok), rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
    vision = dict(
        depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14, spatial_merge_size=2
    )
    config = Qwen2VLConfig(text_config=text, vision_config=vision, **_qwen_token_kwargs(tok))
    torch.manual_seed(seed)
    _finish(out_dir, Qwen2VLForConditionalGeneration(config), tok, _qwen_image_processor(14))


@tiny_builder("qwen2_5_vl")
def build_qwen2_5_vl(out_dir: Path, seed: int) -> None:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tok = _qwen_tokenizer("You are a helpful assistant.")
    text = tiny_text_config(len(tok), rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        patch_size=14,
        spatial_merge_size=2,
        window_size=56,
        fullatt_block_indexes=[1],
    )
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **_qwen_token_kwargs(tok))
    torch.manual_seed(seed)
    _finish(out_dir, Qwen2_5_VLForConditionalGeneration(config), tok, _qwen_image_processor(14))


@tiny_builder("qwen3_vl")
def build_qwen3_vl(out_dir: Path, seed: int) -> None:
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    tok = _qwen_tokenizer(None)
    rope = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": [4, 2, 2],
        "mrope_interleaved": True,
    }
    text = tiny_text_config(len(tok), rope_parameters=rope)
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        patch_size=16,
        spatial_merge_size=2,
        num_position_embeddings=16,
        deepstack_visual_indexes=[0, 1],
    )
    config = Qwen3VLConfig(text_config=text, vision_config=vision, **_qwen_token_kwargs(tok))
    torch.manual_seed(seed)
    _finish(out_dir, Qwen3VLForConditionalGeneration(config), tok, _qwen_image_processor(16))


# -- LLaVA-NeXT, LLaVA-OneVision, InternVL ---------------------------------------------------------
_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]


def _clip_vision(image_size: int = 32, patch: int = 8) -> Any:
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
        projection_dim=32,
    )


def _siglip_vision(image_size: int = 32, patch: int = 8) -> Any:
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
    )


def _llama_text(tok: Any, **overrides: object) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        **tiny_text_config(len(tok), **overrides),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )


def _qwen2_text(tok: Any) -> Any:
    from transformers import Qwen2Config

    return Qwen2Config(
        **tiny_text_config(len(tok)), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id
    )


LLAVA_NEXT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}<<SYS>>{{ '\\n' }}"
    + _content("")
    + "{{ '\\n' }}<</SYS>>{{ '\\n\\n' }}"
    "{% elif m['role'] == 'user' %}[INST] " + _content("<image>\n") + " [/INST]"
    "{% else %} " + _content("") + "</s>{% endif %}{% endfor %}"
)


@tiny_builder("llava_next")
def build_llava_next(out_dir: Path, seed: int) -> None:
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    tok = train_tokenizer(["<image>"], chat_template=LLAVA_NEXT_TEMPLATE)
    config = LlavaNextConfig(
        vision_config=_clip_vision(),
        text_config=_llama_text(tok),
        image_token_index=_ids(tok, "<image>")[0],
        image_grid_pinpoints=_PINPOINTS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=16,
    )
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=_PINPOINTS
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token="<image>",
        chat_template=LLAVA_NEXT_TEMPLATE,
    )
    torch.manual_seed(seed)
    _finish(out_dir, LlavaNextForConditionalGeneration(config), tok, processor)


@tiny_builder("llava_onevision")
def build_llava_onevision(out_dir: Path, seed: int) -> None:
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
    )

    tok = train_tokenizer(
        ["<|im_start|>", "<|im_end|>", "<image>", "<video>"],
        chat_template=chatml_template("<image>\n"),
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        unk=None,
    )
    image, video = _ids(tok, "<image>", "<video>")
    config = LlavaOnevisionConfig(
        vision_config=_siglip_vision(),
        text_config=_qwen2_text(tok),
        image_token_index=image,
        video_token_index=video,
        image_grid_pinpoints=_PINPOINTS,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9",
    )
    image_processor = LlavaOnevisionImageProcessor(
        size={"height": 32, "width": 32}, image_grid_pinpoints=_PINPOINTS
    )
    torch.manual_seed(seed)
    _finish(out_dir, LlavaOnevisionForConditionalGeneration(config), tok, image_processor)


@tiny_builder("internvl")
def build_internvl(out_dir: Path, seed: int) -> None:
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLVisionConfig,
    )

    tok = train_tokenizer(
        ["<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"],
        chat_template=chatml_template("<IMG_CONTEXT>\n"),
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        unk=None,
    )
    vision = InternVLVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=[32, 32],
        patch_size=[8, 8],
    )
    config = InternVLConfig(
        vision_config=vision,
        text_config=_qwen2_text(tok),
        image_token_id=_ids(tok, "<IMG_CONTEXT>")[0],
        image_seq_length=4,
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )
    image_processor = GotOcr2ImageProcessor(
        size={"height": 32, "width": 32}, crop_to_patches=True, max_patches=4
    )
    torch.manual_seed(seed)
    _finish(out_dir, InternVLForConditionalGeneration(config), tok, image_processor)


# -- Mistral 3, Gemma 3, PaliGemma ----------------------------------------------------------------
MISTRAL3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}[SYSTEM_PROMPT]" + _content("") + "[/SYSTEM_PROMPT]"
    "{% elif m['role'] == 'user' %}[INST]" + _content("[IMG]") + "[/INST]"
    "{% else %}" + _content("") + "</s>{% endif %}{% endfor %}"
)


@tiny_builder("mistral3")
def build_mistral3(out_dir: Path, seed: int) -> None:
    from transformers import (
        Mistral3Config,
        Mistral3ForConditionalGeneration,
        MistralConfig,
        PixtralImageProcessor,
        PixtralVisionConfig,
    )

    tok = train_tokenizer(
        ["[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]", "[IMG_BREAK]", "[IMG_END]"],
        chat_template=MISTRAL3_TEMPLATE,
    )
    vision = PixtralVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=64,
        patch_size=8,
    )
    text = MistralConfig(
        **tiny_text_config(len(tok)),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    config = Mistral3Config(
        vision_config=vision,
        text_config=text,
        image_token_index=_ids(tok, "[IMG]")[0],
        spatial_merge_size=2,
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    image_processor = PixtralImageProcessor(size={"longest_edge": 64}, patch_size=16)
    torch.manual_seed(seed)
    _finish(out_dir, Mistral3ForConditionalGeneration(config), tok, image_processor)


GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% set sys = messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'][0]['text'] %}{% set prefix = sys + '\\n\\n' %}"
    "{% set turns = messages[1:] %}{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}"
    "{% for m in turns %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}{{ '\\n' }}"
    "{{ prefix if loop.first else '' }}"
    + _content("<start_of_image>")
    + "<end_of_turn>{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model{{ '\\n' }}{% endif %}"
)


@tiny_builder("gemma3")
def build_gemma3(out_dir: Path, seed: int) -> None:
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
        Gemma3TextConfig,
    )

    specials = {
        "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>",
        "image_token": "<image_soft_token>",
    }
    tok = train_tokenizer(
        ["<start_of_turn>", "<end_of_turn>", *specials.values()],
        chat_template=GEMMA3_TEMPLATE,
        bos="<bos>",
        eos="<eos>",
        extra_special_tokens=specials,
    )
    text = Gemma3TextConfig(
        **tiny_text_config(len(tok)),
        query_pre_attn_scalar=16,
        sliding_window=16,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    boi, eoi, image = _ids(tok, *specials.values())
    config = Gemma3Config(
        vision_config=_siglip_vision(),
        text_config=text,
        mm_tokens_per_image=4,
        boi_token_index=boi,
        eoi_token_index=eoi,
        image_token_index=image,
    )
    image_processor = Gemma3ImageProcessor(size={"height": 32, "width": 32})
    processor = Gemma3Processor(
        image_processor=image_processor, tokenizer=tok, image_seq_length=4, chat_template=GEMMA3_TEMPLATE
    )
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config)
    with torch.no_grad():  # initialised to zeros, which would make every image invisible
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=0.2)
    _finish(out_dir, model, tok, processor)


@tiny_builder("paligemma")
def build_paligemma(out_dir: Path, seed: int) -> None:
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        SiglipImageProcessor,
    )

    tok = train_tokenizer(["<image>"], chat_template=None, bos="<bos>", eos="<eos>")
    text = GemmaConfig(
        **tiny_text_config(len(tok)),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    config = PaliGemmaConfig(
        vision_config=_siglip_vision(),
        text_config=text,
        image_token_index=_ids(tok, "<image>")[0],
        projection_dim=64,
        tie_word_embeddings=False,
    )
    image_processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    image_processor.image_seq_length = 16  # type: ignore[attr-defined]  # PaliGemmaProcessor reads it
    torch.manual_seed(seed)
    _finish(out_dir, PaliGemmaForConditionalGeneration(config), tok, image_processor)


# -- Idefics3, SmolVLM, Mllama --------------------------------------------------------------------
def _idefics3_template(start: str) -> str:
    return (
        start + "{% for m in messages %}{{ m['role'] | capitalize }}"
        "{% if m['content'] is not string and m['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
        + _content("<image>")
        + "<end_of_utterance>{{ '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}Assistant:{% endif %}"
    )


_IDEFICS3_SPECIALS = [
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
    "<end_of_utterance>",
    *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)),
]


def _build_idefics3_like(out_dir: Path, seed: int, smol: bool) -> None:
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessor,
    )

    bos = "<|im_start|>" if smol else "<|begin_of_text|>"
    template = _idefics3_template(bos)
    tok = train_tokenizer(_IDEFICS3_SPECIALS, chat_template=template, bos=bos, eos="<end_of_utterance>")
    vision: dict[str, Any] = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    kwargs = dict(
        vision_config=vision,
        text_config=_llama_text(tok).to_dict(),
        image_token_id=_ids(tok, "<image>")[0],
        scale_factor=2,
    )
    image_kwargs: dict[str, Any] = dict(
        size={"longest_edge": 64}, max_image_size={"longest_edge": 32}, do_image_splitting=True
    )
    torch.manual_seed(seed)
    if smol:
        model: Any = SmolVLMForConditionalGeneration(SmolVLMConfig(**kwargs))
        _finish(out_dir, model, tok, SmolVLMImageProcessor(**image_kwargs))
        return
    model = Idefics3ForConditionalGeneration(Idefics3Config(**kwargs))
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessor(**image_kwargs),
        tokenizer=tok,
        image_seq_len=4,
        chat_template=template,
    )
    _finish(out_dir, model, tok, processor)


@tiny_builder("idefics3")
def build_idefics3(out_dir: Path, seed: int) -> None:
    _build_idefics3_like(out_dir, seed, smol=False)


@tiny_builder("smolvlm")
def build_smolvlm(out_dir: Path, seed: int) -> None:
    _build_idefics3_like(out_dir, seed, smol=True)


MLLAMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>{{ '\\n\\n' }}"
    + _content("<|image|>")
    + "<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>{{ '\\n\\n' }}{% endif %}"
)


@tiny_builder("mllama")
def build_mllama(out_dir: Path, seed: int) -> None:
    from transformers import (
        MllamaConfig,
        MllamaForConditionalGeneration,
        MllamaImageProcessor,
        MllamaProcessor,
        MllamaTextConfig,
        MllamaVisionConfig,
    )

    tok = train_tokenizer(
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|image|>"],
        chat_template=MLLAMA_TEMPLATE,
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        pad="<|finetune_right_pad_id|>",
    )
    vision = MllamaVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_global_layers=1,
        attention_heads=2,
        image_size=32,
        patch_size=8,
        max_num_tiles=2,
        intermediate_layers_indices=[0],
        vision_output_dim=64,
        supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]],
    )
    text_kwargs = tiny_text_config(len(tok))
    text_kwargs.pop("head_dim")
    cross_layers = [1]
    text = MllamaTextConfig(
        **text_kwargs,
        cross_attention_layers=cross_layers,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    config = MllamaConfig(vision_config=vision, text_config=text, image_token_index=_ids(tok, "<|image|>")[0])
    image_processor = MllamaImageProcessor(size={"height": 32, "width": 32}, max_image_tiles=2)
    processor = MllamaProcessor(image_processor=image_processor, tokenizer=tok, chat_template=MLLAMA_TEMPLATE)
    torch.manual_seed(seed)
    model = MllamaForConditionalGeneration(config)
    with torch.no_grad():  # the cross-attention gates start at tanh(0) = 0: the image would be invisible
        for index in cross_layers:
            layer = model.model.language_model.layers[index]
            layer.cross_attn_attn_gate.fill_(1.0)
            layer.cross_attn_mlp_gate.fill_(1.0)
    _finish(out_dir, model, tok, processor)
