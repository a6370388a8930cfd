"""Multiple-choice answers (ScienceQA-IMG, MMBench): which option a free-text reply picks, and
accuracy, plain or circular.

A reply picks an option by its letter (``B``, ``(B)``, ``B.``, ``Answer: B``, ``the answer is
(B)``) or, failing that, by naming exactly one option's text. Anything else picks nothing and
counts as wrong: a scorer that guessed would flatter a model that rambles.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

LETTERS = string.ascii_uppercase

_LEAD_IN = re.compile(
    r"^\s*(?:the\s+)?(?:correct\s+|best\s+|right\s+)?(?:answer|option|choice)(?:\s+is)?\s*[:\-]?\s*",
    re.IGNORECASE,
)
_LEADING_LETTER = re.compile(r"^[\(\[]?([A-Z])([\)\]]|[.:,]|\s|$)")
#: Capitals that also start ordinary sentences ("A dog ...", "I think ...").
_WORDLIKE = frozenset("AI")
_LONE_LETTER = re.compile(r"^[\(\[]?([A-Za-z])[\)\]]?[.:]?$")
_STATED_LETTER = re.compile(
    r"(?i:\b(?:answer|option|choice)(?:\s+is)?)\s*[:\-]?\s*[\(\[]?([A-Z])(?:[\)\]]|\b)"
)
_WORDS = re.compile(r"[a-z0-9]+")


def option_letters(n: int) -> str:
    """``"ABCD"`` for four options; more than 26 options is an error (no letter for them)."""
    if not 0 < n <= len(LETTERS):
        raise ValueError(f"a multiple-choice question needs 1 to 26 options, got {n}")
    return LETTERS[:n]


def letter_index(letter: str, n_options: int) -> int:
    """The option index of ``letter`` (``"B"`` -> 1); a letter past the options is an error."""
    index = LETTERS.find(letter.strip().upper()) if len(letter.strip()) == 1 else -1
    if not 0 <= index < n_options:
        raise ValueError(f"answer {letter!r} is not one of the option letters {option_letters(n_options)}")
    return index


def _words(text: str) -> str:
    return " ".join(_WORDS.findall(text.lower()))


def _by_text(reply: str, choices: Sequence[str]) -> int | None:
    said = _words(reply)
    options = [_words(c) for c in choices]
    exact = [i for i, o in enumerate(options) if o and o == said]
    if len(exact) == 1:
        return exact[0]
    padded = f" {said} "
    named = [i for i, o in enumerate(options) if o and f" {o} " in padded]
    # "dark red" names "red" too: keep only options not contained in another named one.
    named = [i for i in named if not any(j != i and f" {options[i]} " in f" {options[j]} " for j in named)]
    return named[0] if len(named) == 1 else None


def extract_choice(reply: str, choices: Sequence[str]) -> int | None:
    """The index of the option ``reply`` picks, or ``None`` when it picks none (or several).

    Order of the rules: a lone letter of either case, a leading capital letter (after an
    optional "The answer is"/"Answer:"; "A"/"I" followed by a space count only when option A's
    text follows, since "A dog ..." is a sentence), a letter stated anywhere as "answer/option X", then the text
    of exactly one option (whole words, case and punctuation ignored; when one named option
    contains another, the longer one counts). Letters past the last option are ignored.
    """
    n = len(choices)
    text = reply.strip()
    if not text or n == 0:
        return None
    body = _LEAD_IN.sub("", text, count=1)
    match = _LONE_LETTER.match(body)
    if match and LETTERS.find(match.group(1).upper()) < n:
        return LETTERS.find(match.group(1).upper())
    match = _LEADING_LETTER.match(body)
    if match and LETTERS.find(match.group(1)) < n:
        index = LETTERS.find(match.group(1))
        rest = _words(body[match.end() :])
        option = _words(choices[index])
        # "A dog is ..." is a sentence, not option A, unless it goes on with option A's text.
        if not (match.group(2).isspace() and match.group(1) in _WORDLIKE) or (
            option and f"{rest} ".startswith(f"{option} ")
        ):
            return index
    stated = {LETTERS.find(m.group(1)) for m in _STATED_LETTER.finditer(text)}
    stated = {i for i in stated if i < n}
    if len(stated) == 1:
        return stated.pop()
    return _by_text(text, choices)


def choice_accuracy(predicted: Sequence[int | None], answers: Sequence[int]) -> float:
    """Share of questions whose picked option is the right one (``None`` = wrong)."""
    if len(predicted) != len(answers):
        raise ValueError(f"{len(predicted)} predictions for {len(answers)} answers")
    if not answers:
        raise ValueError("no questions to score")
    return sum(p is not None and p == a for p, a in zip(predicted, answers, strict=True)) / len(answers)


def circular_accuracy(groups: Sequence[str], correct: Sequence[bool]) -> float:
    """MMBench's circular evaluation: a question (``groups`` names it, once per rotation of its
    options) counts right only when every rotation was answered right."""
    if len(groups) != len(correct):
        raise ValueError(f"{len(groups)} group names for {len(correct)} results")
    if not groups:
        raise ValueError("no questions to score")
    verdict: dict[str, bool] = {}
    for group, ok in zip(groups, correct, strict=True):
        verdict[group] = verdict.get(group, True) and bool(ok)
    return sum(verdict.values()) / len(verdict)
