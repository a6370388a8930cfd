"""Chat templates of the tiny checkpoints, each in its family's style (Jinja, as Hugging Face
tokenizers carry them). LLaVA-1.5's is :data:`safegap.models.tokenizer.LLAVA_TEMPLATE`."""

from __future__ import annotations


def content(image: str) -> str:
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
        + content(image)
        + "<|im_end|>{{ '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant{{ '\\n' }}{% endif %}"
    )


LLAVA_NEXT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}<<SYS>>{{ '\\n' }}"
    + content("")
    + "{{ '\\n' }}<</SYS>>{{ '\\n\\n' }}"
    "{% elif m['role'] == 'user' %}[INST] " + content("<image>\n") + " [/INST]"
    "{% else %} " + content("") + "</s>{% endif %}{% endfor %}"
)


MISTRAL3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}[SYSTEM_PROMPT]" + content("") + "[/SYSTEM_PROMPT]"
    "{% elif m['role'] == 'user' %}[INST]" + content("[IMG]") + "[/INST]"
    "{% else %}" + content("") + "</s>{% endif %}{% endfor %}"
)


GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% set sys = messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'][0]['text'] %}{% set prefix = sys + '\\n\\n' %}"
    "{% set turns = messages[1:] %}{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}"
    "{% for m in turns %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}{{ '\\n' }}"
    "{{ prefix if loop.first else '' }}"
    + content("<start_of_image>")
    + "<end_of_turn>{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model{{ '\\n' }}{% endif %}"
)


def idefics3_template(start: str) -> str:
    return (
        start + "{% for m in messages %}{{ m['role'] | capitalize }}"
        "{% if m['content'] is not string and m['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
        + content("<image>")
        + "<end_of_utterance>{{ '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}Assistant:{% endif %}"
    )


MLLAMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>{{ '\\n\\n' }}"
    + content("<|image|>")
    + "<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>{{ '\\n\\n' }}{% endif %}"
)


#: ChatML-style template with plain string content, as text LLMs (SmolLM2, Qwen) write it.
CHATML_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
