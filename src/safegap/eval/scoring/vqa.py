"""Open-ended answers: the VQA answer normalisation (VQAv2, TextVQA), the 10-annotator VQA
accuracy, and exact match.

Normalisation, as the VQA evaluation describes it: whitespace collapsed and lower-cased;
punctuation removed (apostrophes and colons kept), a mark touching a space or an end dropped,
one inside a word turned into a space ("black-and-white" -> "black and white"), a comma
between digits dropped ("10,000" -> "10000"), a full stop kept only as a decimal point; number
words zero to ten written as digits ("none" counts as 0); the articles a, an, the dropped; and
contractions written without their apostrophe restored ("dont" -> "don't"), so both spellings
agree.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

#: The marks the VQA evaluation removes (apostrophes, colons, "%" and the like are kept).
PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})

# Contractions as written with apostrophes; the table maps each apostrophe-less spelling back.
# Left out on purpose: apostrophe-less spellings that are ordinary words (well, were, its, ill,
# hell, shell, wed, id, lets, hed, shed); "wont" and "cant" stay, being far commoner as typos.
_CONTRACTION_TEXT = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've "
    "hasn't haven't he'd've he's how'd how'll how's i'd've i'm i've isn't it'd it'd've it'll "
    "let's ma'am mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't "
    "shan't she'd've she's should've shouldn't shouldn't've somebody'd somebody'd've somebody'll "
    "somebody's someone'd someone'd've someone'll someone's something'd something'd've "
    "something'll something's that's there'd there'd've there're there's they'd they'd've "
    "they'll they're they've 'twas wasn't we'd've we've weren't what'll what're what's what've "
    "when's where'd where's where've who'd who'd've who'll who're who's who've why'll why're "
    "why's won't would've wouldn't wouldn't've y'all y'all'd've you'd you'd've you'll you're "
    "you've that'd that'll there'll"
)
_CONTRACTIONS = _CONTRACTION_TEXT.split()
_ORDINARY_WORDS = frozenset(
    {"well", "were", "its", "ill", "hell", "shell", "wed", "id", "lets", "hed", "shed"}
)
CONTRACTIONS = {
    c.replace("'", ""): c for c in _CONTRACTIONS if c.replace("'", "") not in _ORDINARY_WORDS and "'" in c
}

_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d)")
_FULL_STOP = re.compile(r"(?<!\d)\.|\.(?!\d)")


def _strip_punctuation(text: str) -> str:
    text = _DIGIT_COMMA.sub("", text)
    out: list[str] = []
    for i, ch in enumerate(text):
        if ch not in PUNCTUATION:
            out.append(ch)
            continue
        before = text[i - 1] if i > 0 else " "
        after = text[i + 1] if i + 1 < len(text) else " "
        touches_space = before.isspace() or after.isspace()
        out.append("" if touches_space else " ")
    return _FULL_STOP.sub("", "".join(out))


def normalize_answer(text: str) -> str:
    """``text`` in the VQA evaluation's normal form (rules in the module docstring)."""
    text = " ".join(text.split()).lower()
    words = []
    for word in _strip_punctuation(text).split():
        word = NUMBER_WORDS.get(word, word)
        if word in ARTICLES:
            continue
        words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: Sequence[str], normalize_unanimous: bool = True) -> float:
    """VQA accuracy of one prediction against its human answers (10 in VQAv2 and TextVQA):
    for each annotator left out, ``min(#other annotators who gave the prediction / 3, 1)``,
    averaged over the leave-one-out subsets. So 3 or more matching annotators out of 10 give
    1.0, 2 give 0.6, 1 gives 0.3.

    ``normalize_unanimous=False`` reproduces a quirk of the official script: when all answers
    agree it compares the raw (only whitespace-trimmed) strings, so "two" against ten "2" scores
    0. With one answer the score is exact match.
    """
    if not answers:
        raise ValueError("no reference answers to score against")
    raw = [" ".join(a.split()).lower() for a in answers]
    if not normalize_unanimous and len(set(raw)) == 1:
        said, refs = " ".join(prediction.split()).lower(), raw
    else:
        said, refs = normalize_answer(prediction), [normalize_answer(a) for a in answers]
    if len(refs) == 1:
        return float(said == refs[0])
    matches = [r == said for r in refs]
    total = sum(matches)
    return sum(min((total - m) / 3.0, 1.0) for m in matches) / len(refs)


def exact_match(prediction: str, references: Sequence[str], mode: str = "exact") -> float:
    """1.0 when the normalised prediction equals a normalised reference (``mode="exact"``) or
    contains one as whole words (``mode="contains"``: "it is red" matches "red"), else 0.0."""
    if mode not in ("exact", "contains"):
        raise ValueError(f"exact_match mode must be 'exact' or 'contains', got {mode!r}")
    if not references:
        raise ValueError("no reference answers to score against")
    said = normalize_answer(prediction)
    refs = [r for r in (normalize_answer(x) for x in references) if r]
    if mode == "exact":
        return float(said in refs)
    padded = f" {said} "
    return float(any(f" {r} " in padded for r in refs))
