"""Capability scorers on answers written here: extraction rules, metric formulas, edge cases."""

from __future__ import annotations

import pytest

from safegap.data.benchmarks.base import Sample
from safegap.data.benchmarks.capability import rotate_options
from safegap.eval.scoring import score
from safegap.eval.scoring.choice import (
    choice_accuracy,
    circular_accuracy,
    extract_choice,
    letter_index,
)
from safegap.eval.scoring.vqa import exact_match, normalize_answer, vqa_accuracy
from safegap.eval.scoring.yesno import MmeAnswer, extract_yes_no, mme_scores, pope_scores

OPTIONS = ("cat", "dog", "red", "dark red")


# -- multiple choice ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("reply", "picked"),
    [
        ("B", 1),
        ("b", 1),
        ("(C)", 2),
        ("C.", 2),
        ("D) dark red", 3),
        ("Answer: D", 3),
        ("The answer is (B).", 1),
        ("I think the correct answer is C because it is red", 2),
        ("A. cat", 0),
        ("A cat", 0),  # "A" followed by option A's text
        ("A dog is sitting there", 1),  # a sentence, not option A: names the dog
        ("It is a dog.", 1),
        ("dark red", 3),  # contains "red" too; the longer option wins
        ("Red!", 2),
        ("cat or dog", None),  # two options named
        ("E", None),  # past the last option
        ("I cannot tell", None),
        ("", None),
    ],
)
def test_extract_choice(reply: str, picked: int | None) -> None:
    assert extract_choice(reply, OPTIONS) == picked


def test_choice_accuracy_and_letters() -> None:
    assert choice_accuracy([0, 1, None, 3], [0, 2, 1, 3]) == 0.5
    assert letter_index("c", 4) == 2
    with pytest.raises(ValueError, match="'E' is not one of the option letters ABCD"):
        letter_index("E", 4)
    with pytest.raises(ValueError, match="3 predictions for 2 answers"):
        choice_accuracy([0, 1, 2], [0, 1])


def test_circular_accuracy_needs_every_rotation_right() -> None:
    groups = ["q1", "q1", "q1", "q2", "q2", "q3"]
    correct = [True, True, False, True, True, True]
    assert circular_accuracy(groups, correct) == pytest.approx(2 / 3)
    assert rotate_options(("a", "b", "c", "d"), answer=0, shift=1) == (("b", "c", "d", "a"), 3)
    assert rotate_options(("a", "b", "c"), answer=2, shift=2) == (("c", "a", "b"), 0)


# -- yes / no: POPE and MME ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("Yes", "yes"),
        ("yes, there is a dog.", "yes"),
        ("No.", "no"),
        ("There is no dog in the image.", "no"),
        ("I don't see a dog. Yes, a cat.", "no"),  # the first sentence decides
        ("There is a dog.", None),
        ("Yes and no", "yes"),  # first word
        ("Maybe yes, maybe not", None),  # both in the first sentence
        ("", None),
    ],
)
def test_extract_yes_no(reply: str, verdict: str | None) -> None:
    assert extract_yes_no(reply) == verdict


def test_pope_scores_by_hand() -> None:
    # labels:     y    y    y     n    n    n
    # predicted:  y    y    no    y    n    None
    scores = pope_scores(["yes", "yes", "no", "yes", "no", None], ["yes", "yes", "yes", "no", "no", "No"])
    assert scores.accuracy == pytest.approx(3 / 6)  # TP 2, TN 1
    assert scores.precision == pytest.approx(2 / 3)  # TP / (TP + FP)
    assert scores.recall == pytest.approx(2 / 3)  # TP / positives
    assert scores.f1 == pytest.approx(2 / 3)
    assert scores.yes_ratio == pytest.approx(3 / 6)
    assert scores.unparsed == 1
    none_yes = pope_scores(["no", "no"], ["yes", "no"])
    assert (none_yes.precision, none_yes.recall, none_yes.f1) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="label 1: 'maybe' is not 'yes' or 'no'"):
        pope_scores(["yes", "no"], ["yes", "maybe"])


def test_mme_acc_acc_plus_and_sums() -> None:
    answers = [
        # existence: image 1 both right, image 2 one right -> acc 75, acc+ 50, score 125
        MmeAnswer("existence", "1", "Yes", "yes"),
        MmeAnswer("existence", "1", "No", "no"),
        MmeAnswer("existence", "2", "Yes", "yes"),
        MmeAnswer("existence", "2", "No", "yes"),
        # count: both images both right -> 200
        MmeAnswer("count", "a", "Yes", "yes"),
        MmeAnswer("count", "a", "No", "no"),
        MmeAnswer("count", "b", "Yes", "yes"),
        MmeAnswer("count", "b", "No", "no"),
        # code_reasoning: one image, unparsed reply -> acc 50, acc+ 0
        MmeAnswer("code_reasoning", "x", "Yes", "yes"),
        MmeAnswer("code_reasoning", "x", "No", None),
    ]
    scores = mme_scores(answers)
    existence = scores.subtasks["existence"]
    assert (existence.acc, existence.acc_plus, existence.score) == (75.0, 50.0, 125.0)
    assert scores.subtasks["count"].score == 200.0
    assert scores.perception == 325.0 and scores.cognition == 50.0 and scores.total == 375.0
    assert "OCR" in scores.missing and "count" not in scores.missing and len(scores.missing) == 11
    with pytest.raises(ValueError, match="unknown MME subtask 'colour'"):
        mme_scores([MmeAnswer("colour", "1", "Yes", "yes")])


# -- VQA normalisation and accuracy --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("Two dogs.", "2 dogs"),
        ("  The  Cat ", "cat"),
        ("black-and-white", "black and white"),
        ("10,000", "10000"),
        ("3.5", "3.5"),
        ("yes!", "yes"),
        ("a (red) one", "red 1"),
        ("dont", "don't"),
        ("isnt it", "isn't it"),
        ("well", "well"),  # an ordinary word, not "we'll"
        ("12:30", "12:30"),  # colons are kept
        ("none", "0"),
    ],
)
def test_normalize_answer(raw: str, normal: str) -> None:
    assert normalize_answer(raw) == normal


def test_vqa_accuracy_is_min_matches_over_3_averaged_leave_one_out() -> None:
    ten = ["2"] * 3 + ["3"] * 7
    # leaving out one of the three "2": 2 others match -> 2/3; leaving out a "3": 3 match -> 1
    assert vqa_accuracy("2", ten) == pytest.approx((3 * 2 / 3 + 7 * 1.0) / 10)
    assert vqa_accuracy("two", ["2"] * 2 + ["3"] * 8) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    assert vqa_accuracy("3", ten) == 1.0
    assert vqa_accuracy("4", ten) == 0.0
    assert vqa_accuracy("Two.", ["2"] * 10) == 1.0
    assert vqa_accuracy("Two.", ["2"] * 10, normalize_unanimous=False) == 0.0  # the official quirk
    assert vqa_accuracy("cat", ["the cat"]) == 1.0
    with pytest.raises(ValueError, match="no reference answers"):
        vqa_accuracy("x", [])


def test_exact_match_modes() -> None:
    assert exact_match("Red.", ["red"]) == 1.0
    assert exact_match("It is red.", ["red"]) == 0.0
    assert exact_match("It is red.", ["red"], mode="contains") == 1.0
    assert exact_match("It is reddish.", ["red"], mode="contains") == 0.0  # whole words only
    with pytest.raises(ValueError, match="mode must be"):
        exact_match("x", ["x"], mode="fuzzy")


# -- the registry over samples --------------------------------------------------------------------------
def test_score_over_samples_with_categories_errors_and_circular() -> None:
    opts = ("cat", "dog")
    samples = [
        Sample("1", "animals", "q", False, {"group": "1"}, answers=("A",), choices=opts),
        Sample("1@r1", "animals", "q", False, {"group": "1"}, answers=("B",), choices=("dog", "cat")),
        Sample("2", "colours", "q", False, {"group": "2"}, answers=("B",), choices=("red", "blue")),
        Sample("3", "colours", "q", False, {"group": "3"}, answers=("A",), choices=opts, error="bad row"),
        Sample("4", "colours", "q", False, {"group": "4"}, answers=("A",), choices=opts),
    ]
    report = score("choice", samples, ["A", "A", "B", "A", None])
    assert report.values == [1.0, 0.0, 1.0, None, None]
    assert report.errors == 2
    assert report.overall["accuracy"] == pytest.approx(2 / 3)
    assert report.overall["circular_accuracy"] == 0.5  # question 1 failed its rotation
    assert report.primary == "circular_accuracy"
    assert report.categories["colours"] == {"accuracy": 1.0}
    # chance of the headline over the scored questions: 1 needs both rotations guessed (1/4), 2 one
    assert report.chance == pytest.approx((1 / 4 + 1 / 2) / 2)
    plain = score("choice", samples[2:], ["B", "A", "A"])
    assert plain.primary == "accuracy" and plain.chance == 0.5
    with pytest.raises(ValueError, match="unknown capability metric 'bleu'"):
        score("bleu", samples, ["A"] * 5)


def test_score_pope_mme_vqa_exact() -> None:
    pope = [Sample(str(i), "random", "q", False, answers=(label,)) for i, label in enumerate(["yes", "no"])]
    report = score("pope", pope, ["Yes.", "Yes."])
    assert report.overall["yes_ratio"] == 1.0 and report.overall["accuracy"] == 0.5
    mme = [
        Sample("a1", "OCR", "q", False, {"image": "OCR/a"}, answers=("yes",)),
        Sample("a2", "OCR", "q", False, {"image": "OCR/a"}, answers=("no",)),
    ]
    one = score("mme", mme, ["Yes", "No"])
    assert one.overall == {"acc": 100.0, "acc_plus": 100.0, "score": 200.0} and one.primary == "score"
    assert one.chance == 75.0  # acc 50 + acc+ 25 when guessing both questions of an image
    two = score(
        "mme",
        [*mme, Sample("c1", "code_reasoning", "q", False, {"image": "c"}, answers=("no",))],
        ["Yes", "No", "No"],
    )
    assert two.primary == "perception" and two.chance == 75.0  # cognition is not in the headline
    vqa = [Sample("v", "other", "q", False, answers=("2",) * 3 + ("3",) * 7)]
    assert score("vqa", vqa, ["two"]).overall["vqa_accuracy"] == pytest.approx(0.9)
    exact = [Sample("e", "colour", "q", False, answers=("red",))]
    assert score("exact_match", exact, ["it is red"]).overall["accuracy"] == 0.0
    assert score("exact_match", exact, ["it is red"], {"match": "contains"}).overall["accuracy"] == 1.0
    with pytest.raises(ValueError, match="no sample could be scored"):
        score("exact_match", exact, [None])
