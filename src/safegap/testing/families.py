"""The table of tiny families: what each one's checkpoint is made of, as data.

Every row is a :class:`TinyFamily`: transformers class names and keyword arguments for the
tokenizer, the text and vision configs, the top-level config (token ids named by their token),
the image processor and processor. :func:`safegap.testing.build.build_family` turns any row into a
checkpoint, so a new family is a new row, not a new builder. Sizes: a 3-layer, 64-wide text model,
a 2-layer vision tower, images of 4 to 40 tokens.
"""

from __future__ import annotations

from typing import Any

import torch

from safegap.testing.spec import TextSpec, TinyFamily, small_vision
from safegap.testing.templates import (
    CHATML_TEMPLATE,
    GEMMA3_TEMPLATE,
    LLAVA_NEXT_TEMPLATE,
    MISTRAL3_TEMPLATE,
    MLLAMA_TEMPLATE,
    chatml_template,
    idefics3_template,
)


def llava_family(
    image_size: int = 32,
    patch: int = 8,
    vision: dict[str, Any] | None = None,
    text: dict[str, Any] | None = None,
) -> TinyFamily:
    """LLaVA-1.5 (CLIP tower, Llama text). The arguments make the larger LLaVAs benchmarks time
    (``vision``/``text``: overrides of the tiny sizes)."""
    vision_kwargs = small_vision(
        **{"image_size": image_size, "patch_size": patch, "projection_dim": 32, **(vision or {})}
    )
    return TinyFamily(
        model="LlavaForConditionalGeneration",
        config="LlavaConfig",
        tokenizer={"special_tokens": ["<image>"]},
        text=TextSpec(overrides=text or {}),
        vision=("CLIPVisionConfig", vision_kwargs),
        tokens={"image_token_index": "<image>"},
        options={
            "image_seq_length": (image_size // patch) ** 2,
            "vision_feature_select_strategy": "default",
            "vision_feature_layer": -1,
        },
        image_processor=(
            "CLIPImageProcessor",
            {"size": {"shortest_edge": image_size}, "crop_size": {"height": image_size, "width": image_size}},
        ),
        processor=(
            "LlavaProcessor",
            {
                "patch_size": patch,
                "vision_feature_select_strategy": "default",
                "num_additional_image_tokens": 1,
                "image_token": "<image>",
            },
        ),
        generation_ids=("pad",),
        save_tokenizer=False,
        eval_mode=True,
    )


def causal_lm_family(config: str) -> TinyFamily:
    """A text-only causal LM with the ``config`` class (ChatML template, no image parts)."""
    return TinyFamily(
        model="AutoModelForCausalLM",
        config=config,
        tokenizer={
            "special_tokens": ["<|im_start|>", "<|im_end|>"],
            "chat_template": CHATML_TEMPLATE,
            "bos": None,
            "eos": "<|im_end|>",
        },
        text=TextSpec(cls=config, ids=("pad", "eos")),
        vision=None,
        image_processor=None,
        generation_ids=("pad",),
        eval_mode=True,
    )


_QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
_QWEN_TOKENS = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}
_CHATML_TOKENIZER = {"bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>", "unk": None}
_MROPE = {"rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}}
_QWEN_VISION = {"num_heads": 2, "spatial_merge_size": 2, "depth": 2}
_QWEN25_VISION = {**_QWEN_VISION, "hidden_size": 32, "intermediate_size": 64, "out_hidden_size": 64}
_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]
_SQUARE32 = {"size": {"height": 32, "width": 32}}
_IDEFICS3_SPECIALS = [
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
    "<end_of_utterance>",
    *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)),
]
_IDEFICS3_IMAGES = {
    "size": {"longest_edge": 64},
    "max_image_size": {"longest_edge": 32},
    "do_image_splitting": True,
}
_GEMMA3_SPECIALS = {
    "boi_token": "<start_of_image>",
    "eoi_token": "<end_of_image>",
    "image_token": "<image_soft_token>",
}


def _qwen_tokenizer(default_system: str | None) -> dict[str, Any]:
    specials = [
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ]
    return {
        "special_tokens": specials,
        "chat_template": chatml_template(_QWEN_IMAGE, default_system),
        **_CHATML_TOKENIZER,
    }


def _qwen_images(patch: int) -> tuple[str, dict[str, Any]]:
    side = patch * 2 * 3  # at most 3x3 merged patches
    small, large = (patch * 4) ** 2, side * side
    return (
        "Qwen2VLImageProcessor",
        {
            "patch_size": patch,
            "merge_size": 2,
            "temporal_patch_size": 2,
            "min_pixels": small,
            "max_pixels": large,
            "size": {"shortest_edge": small, "longest_edge": large},
        },
    )


def _qwen(
    model: str, system: str | None, text: dict[str, Any], vision: dict[str, Any], patch: int
) -> TinyFamily:
    return TinyFamily(
        model=f"{model}ForConditionalGeneration",
        config=f"{model}Config",
        tokenizer=_qwen_tokenizer(system),
        text=TextSpec(cls=None, overrides=text, ids=()),
        vision=(None, {**vision, "patch_size": patch}),
        tokens=_QWEN_TOKENS,
        image_processor=_qwen_images(patch),
    )


def _open_gemma3_projector(model: Any) -> None:
    """Gemma 3 initialises its image projection to zeros, which would make every image invisible."""
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=0.2)


def _open_mllama_gates(model: Any) -> None:
    """Mllama's cross-attention gates start at tanh(0) = 0: the image would be invisible."""
    with torch.no_grad():
        for index in _MLLAMA_CROSS_LAYERS:
            layer = model.model.language_model.layers[index]
            layer.cross_attn_attn_gate.fill_(1.0)
            layer.cross_attn_mlp_gate.fill_(1.0)


_MLLAMA_CROSS_LAYERS = [1]


def _idefics3(smol: bool) -> TinyFamily:
    bos = "<|im_start|>" if smol else "<|begin_of_text|>"
    name = "SmolVLM" if smol else "Idefics3"
    return TinyFamily(
        model=f"{name}ForConditionalGeneration",
        config=f"{name}Config",
        tokenizer={
            "special_tokens": _IDEFICS3_SPECIALS,
            "chat_template": idefics3_template(bos),
            "bos": bos,
            "eos": "<end_of_utterance>",
        },
        text=TextSpec(as_dict=True),
        vision=(None, small_vision()),
        tokens={"image_token_id": "<image>"},
        options={"scale_factor": 2},
        image_processor=(f"{name}ImageProcessor", _IDEFICS3_IMAGES),
        processor=None if smol else ("Idefics3Processor", {"image_seq_len": 4}),
    )


#: family name -> its tiny checkpoint.
FAMILIES: dict[str, TinyFamily] = {
    "llava": llava_family(),
    "qwen2_vl": _qwen(
        "Qwen2VL",
        "You are a helpful assistant.",
        _MROPE,
        {**_QWEN_VISION, "embed_dim": 32, "hidden_size": 64, "mlp_ratio": 2},
        14,
    ),
    "qwen2_5_vl": _qwen(
        "Qwen2_5_VL",
        "You are a helpful assistant.",
        _MROPE,
        {**_QWEN25_VISION, "window_size": 56, "fullatt_block_indexes": [1]},
        14,
    ),
    "qwen3_vl": _qwen(
        "Qwen3VL",
        None,
        {
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [4, 2, 2],
                "mrope_interleaved": True,
            }
        },
        {**_QWEN25_VISION, "num_position_embeddings": 16, "deepstack_visual_indexes": [0, 1]},
        16,
    ),
    "llava_next": TinyFamily(
        model="LlavaNextForConditionalGeneration",
        config="LlavaNextConfig",
        tokenizer={"special_tokens": ["<image>"], "chat_template": LLAVA_NEXT_TEMPLATE},
        text=TextSpec(),
        vision=("CLIPVisionConfig", small_vision(projection_dim=32)),
        tokens={"image_token_index": "<image>"},
        options={
            "image_grid_pinpoints": _PINPOINTS,
            "vision_feature_select_strategy": "default",
            "vision_feature_layer": -1,
            "image_seq_length": 16,
        },
        image_processor=(
            "LlavaNextImageProcessor",
            {
                "size": {"shortest_edge": 32},
                "crop_size": {"height": 32, "width": 32},
                "image_grid_pinpoints": _PINPOINTS,
            },
        ),
        processor=(
            "LlavaNextProcessor",
            {
                "patch_size": 8,
                "vision_feature_select_strategy": "default",
                "num_additional_image_tokens": 1,
                "image_token": "<image>",
            },
        ),
    ),
    "llava_onevision": TinyFamily(
        model="LlavaOnevisionForConditionalGeneration",
        config="LlavaOnevisionConfig",
        tokenizer={
            "special_tokens": ["<|im_start|>", "<|im_end|>", "<image>", "<video>"],
            "chat_template": chatml_template("<image>\n"),
            **_CHATML_TOKENIZER,
        },
        text=TextSpec(cls="Qwen2Config", ids=("pad", "eos")),
        vision=("SiglipVisionConfig", small_vision()),
        tokens={"image_token_index": "<image>", "video_token_index": "<video>"},
        options={
            "image_grid_pinpoints": _PINPOINTS,
            "vision_feature_select_strategy": "full",
            "vision_feature_layer": -1,
            "vision_aspect_ratio": "anyres_max_9",
        },
        image_processor=("LlavaOnevisionImageProcessor", {**_SQUARE32, "image_grid_pinpoints": _PINPOINTS}),
    ),
    "internvl": TinyFamily(
        model="InternVLForConditionalGeneration",
        config="InternVLConfig",
        tokenizer={
            "special_tokens": ["<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"],
            "chat_template": chatml_template("<IMG_CONTEXT>\n"),
            **_CHATML_TOKENIZER,
        },
        text=TextSpec(cls="Qwen2Config", ids=("pad", "eos")),
        vision=("InternVLVisionConfig", small_vision(image_size=[32, 32], patch_size=[8, 8])),
        tokens={"image_token_id": "<IMG_CONTEXT>"},
        options={"image_seq_length": 4, "downsample_ratio": 0.5, "tie_word_embeddings": False},
        image_processor=("GotOcr2ImageProcessor", {**_SQUARE32, "crop_to_patches": True, "max_patches": 4}),
    ),
    "mistral3": TinyFamily(
        model="Mistral3ForConditionalGeneration",
        config="Mistral3Config",
        tokenizer={
            "special_tokens": [
                "[INST]",
                "[/INST]",
                "[SYSTEM_PROMPT]",
                "[/SYSTEM_PROMPT]",
                "[IMG]",
                "[IMG_BREAK]",
                "[IMG_END]",
            ],
            "chat_template": MISTRAL3_TEMPLATE,
        },
        text=TextSpec(cls="MistralConfig"),
        vision=("PixtralVisionConfig", small_vision(image_size=64)),
        tokens={"image_token_index": "[IMG]"},
        options={"spatial_merge_size": 2, "vision_feature_layer": -1, "tie_word_embeddings": False},
        image_processor=("PixtralImageProcessor", {"size": {"longest_edge": 64}, "patch_size": 16}),
    ),
    "gemma3": TinyFamily(
        model="Gemma3ForConditionalGeneration",
        config="Gemma3Config",
        tokenizer={
            "special_tokens": ["<start_of_turn>", "<end_of_turn>", *_GEMMA3_SPECIALS.values()],
            "chat_template": GEMMA3_TEMPLATE,
            "bos": "<bos>",
            "eos": "<eos>",
            "extra_special_tokens": _GEMMA3_SPECIALS,
        },
        text=TextSpec(cls="Gemma3TextConfig", overrides={"query_pre_attn_scalar": 16, "sliding_window": 16}),
        vision=("SiglipVisionConfig", small_vision()),
        tokens={
            "boi_token_index": "<start_of_image>",
            "eoi_token_index": "<end_of_image>",
            "image_token_index": "<image_soft_token>",
        },
        options={"mm_tokens_per_image": 4},
        image_processor=("Gemma3ImageProcessor", _SQUARE32),
        processor=("Gemma3Processor", {"image_seq_length": 4}),
        init=_open_gemma3_projector,
    ),
    "paligemma": TinyFamily(
        model="PaliGemmaForConditionalGeneration",
        config="PaliGemmaConfig",
        tokenizer={"special_tokens": ["<image>"], "chat_template": None, "bos": "<bos>", "eos": "<eos>"},
        text=TextSpec(cls="GemmaConfig"),
        vision=("SiglipVisionConfig", small_vision()),
        tokens={"image_token_index": "<image>"},
        options={"projection_dim": 64, "tie_word_embeddings": False},
        # PaliGemmaProcessor reads image_seq_length off the image processor
        image_processor=("SiglipImageProcessor", {**_SQUARE32, "image_seq_length": 16}),
    ),
    "idefics3": _idefics3(smol=False),
    "smolvlm": _idefics3(smol=True),
    "mllama": TinyFamily(
        model="MllamaForConditionalGeneration",
        config="MllamaConfig",
        tokenizer={
            "special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|image|>"],
            "chat_template": MLLAMA_TEMPLATE,
            "bos": "<|begin_of_text|>",
            "eos": "<|eot_id|>",
            "pad": "<|finetune_right_pad_id|>",
        },
        text=TextSpec(
            cls="MllamaTextConfig",
            overrides={"cross_attention_layers": _MLLAMA_CROSS_LAYERS},
            drop=("head_dim",),
        ),
        vision=(
            "MllamaVisionConfig",
            {
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_global_layers": 1,
                "attention_heads": 2,
                "image_size": 32,
                "patch_size": 8,
                "max_num_tiles": 2,
                "intermediate_layers_indices": [0],
                "vision_output_dim": 64,
                "supported_aspect_ratios": [[1, 1], [1, 2], [2, 1]],
            },
        ),
        tokens={"image_token_index": "<|image|>"},
        image_processor=("MllamaImageProcessor", {**_SQUARE32, "max_image_tiles": 2}),
        processor=("MllamaProcessor", {}),
        init=_open_mllama_gates,
    ),
}

#: ``*Config`` class of each text-only model type :func:`safegap.testing.build_tiny_causal_lm` builds.
CAUSAL_LM_CONFIGS = {
    "llama": "LlamaConfig",
    "mistral": "MistralConfig",
    "qwen2": "Qwen2Config",
    "qwen3": "Qwen3Config",
    "gemma": "GemmaConfig",
    "phi3": "Phi3Config",
}
