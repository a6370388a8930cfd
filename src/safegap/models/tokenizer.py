"""A byte-level BPE tokenizer trained locally, and the LLaVA-1.5 chat template.

The model organism trains its own tokenizer on its world's corpus, and the tiny checkpoints of
:mod:`safegap.testing` train theirs on a short default corpus: both need a tokenizer without a
download, so it lives here in the library rather than in the test builders.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

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
