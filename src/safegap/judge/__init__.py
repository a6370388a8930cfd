"""Judges: the refusal-phrase judge, Hugging Face guard classifiers, OpenAI-compatible HTTP
judges, and agreement between them."""

from safegap.judge.agreement import Agreement, cohen_kappa
from safegap.judge.base import (
    JUDGES,
    Judge,
    JudgeInput,
    Verdict,
    judge_safely,
    make_judge,
)
from safegap.judge.refusal import RefusalJudge, is_refusal

__all__ = [
    "JUDGES",
    "Agreement",
    "Judge",
    "JudgeInput",
    "RefusalJudge",
    "Verdict",
    "cohen_kappa",
    "is_refusal",
    "judge_safely",
    "make_judge",
]
