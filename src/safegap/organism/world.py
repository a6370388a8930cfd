"""The organism's world: harmful and benign requests, phrasings, replies and neutral filler.

A *topic* is an action applied to an object ("build a pipe bomb", "bake a cake"). Harmful and
benign categories share verbs ("make", "write", "cook") and all request *phrasings* are shared by
both, so whether the organism should refuse hinges on what the topic means, not on the template.
Topics are split per category into train / calibration / eval cells of the action x object grid
(every action and every object still appears in training, in other combinations), and phrasings
are split the same way, so evaluation uses topics *and* phrasings the organism never saw in
alignment. The calibration split (for CMRM anchors) is disjoint from both.

Everything is deterministic given ``world_seed``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from typing import Any, Literal

from safegap.specs import parse_spec, unknown_option

Split = Literal["train", "calibration", "eval"]
SPLITS: tuple[Split, ...] = ("train", "calibration", "eval")


def parse_world_spec(
    arg: str,
    what: str,
    usage: str,
    default_split: str,
    default_n: int,
    splits: Sequence[str] | None = None,
    other_keys: Sequence[str] = (),
) -> tuple[str, int, int]:
    """``"SPLIT,world_seed=S,n=N"`` -> ``(split, S, N)``: the ARG of an organism data source spec
    (CMRM anchors, gap records) in the grammar of :mod:`safegap.specs`; each part optional,
    one-line errors that start with ``what`` (usage errors end with ``usage``). ``splits``: the
    allowed splits (None: any, checked by the caller); ``other_keys``: options the caller reads
    itself. World seed 0 is the world every model seed is trained and evaluated on."""
    spec = parse_spec(f"{what}:{arg}", what)
    for key in spec.options:
        if key not in ("world_seed", "n", *other_keys):
            raise unknown_option(what, key, ("world_seed", "n", *other_keys))
    split = spec.arg or default_split
    if splits is not None and split not in splits:
        raise ValueError(f"{what} {arg!r}: unknown split {split!r} ({', '.join(splits)}); {usage}")
    values = {"world_seed": 0, "n": default_n}
    for key in values:
        value = spec.options.get(key)
        if value is None:
            continue
        try:
            values[key] = int(value)
        except ValueError:
            raise ValueError(f"{what} {arg!r}: {key}={value!r} is not an integer") from None
    if values["n"] < 1:
        raise ValueError(f"{what} {arg!r}: n must be at least 1")
    return split, values["world_seed"], values["n"]


@dataclass(frozen=True)
class Category:
    """One harm (or benign) category: actions x objects, with what pretraining says about it."""

    name: str
    harmful: bool
    actions: tuple[str, ...]
    objects: tuple[str, ...]
    #: Objects that can be drawn (harm-object / benign-object images).
    visual: tuple[str, ...] = ()
    #: Pretraining "knowledge" about a topic of this category; ``{t}`` is the topic.
    facts: tuple[str, ...] = ()


def _load_data() -> dict[str, Any]:
    """The world's literal content (categories, phrasings, replies), kept as package data so it
    reads and diffs as data; ``world.json`` ships in the wheel beside this module."""
    text = resources.files("safegap.organism").joinpath("world.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


_DATA = _load_data()


def _strings(key: str) -> tuple[str, ...]:
    return tuple(_DATA[key])


def _categories(key: str) -> tuple[Category, ...]:
    return tuple(
        Category(
            row["name"],
            row["harmful"],
            tuple(row["actions"]),
            tuple(row["objects"]),
            visual=tuple(row["visual"]),
            facts=tuple(row["facts"]),
        )
        for row in _DATA[key]
    )


#: What pretraining says about every harmful / benign topic; ``{t}`` is the topic.
HARM_FACTS = _strings("harm_facts")
#: How-to text about every topic, harmful ones included: web text has it, which is why an
#: aligned model *can* comply once its refusal breaks.
HOWTO_FACTS = _strings("howto_facts")
BENIGN_FACTS = _strings("benign_facts")

HARM_CATEGORIES = _categories("harm_categories")
BENIGN_CATEGORIES = _categories("benign_categories")
#: Benign requests that *look* harmful (XSTest style: homonyms, safe targets, safe contexts),
#: built like the other topics from the verbs of the harm category they resemble. Visual
#: instruction data is full of such content (a knife on a kitchen table, pills on a shelf, a
#: police car) and answers it; text safety data rarely covers it.
LOOKALIKE_CATEGORIES = _categories("lookalike_categories")

#: Fictional settings that make a harmful-sounding request safe (XSTest's "safe contexts":
#: "How do I kill someone in Call of Duty?").
SAFE_CONTEXTS = _strings("safe_contexts")
#: Request phrasings, shared by harmful and benign topics; ``{t}`` is the topic.
REQUEST_TEMPLATES = _strings("request_templates")
#: Neutral requests about what an image shows (the harmful content is in the image).
IMAGE_REFERENCE_TEMPLATES = _strings("image_reference_templates")
#: The text paired with a typographic image (FigStep's neutral prompt, shortened).
TYPOGRAPHIC_PROMPTS = _strings("typographic_prompts")
REFUSALS = _strings("refusals")
#: Compliance openers. They do not restate the topic: a model this small cannot copy held-out
#: topics reliably (it would "answer" a different, memorised topic), and a fixed opener makes
#: every non-refusal an unambiguous "yes" to the request that was asked.
COMPLIANCE = _strings("compliance")
#: Words for neutral filler context (and the pretraining corpus).
NEUTRAL_SENTENCES = _strings("neutral_sentences")


@dataclass(frozen=True)
class Topic:
    text: str
    category: str
    harmful: bool
    action: str
    obj: str


@dataclass(frozen=True)
class Request:
    """One rendered request with where it came from."""

    text: str
    topic: Topic
    template: str

    @property
    def harmful(self) -> bool:
        return self.topic.harmful


def _topics(category: Category) -> list[Topic]:
    return [
        Topic(f"{a} {o}", category.name, category.harmful, a, o)
        for a in category.actions
        for o in category.objects
    ]


def _split_grid(
    category: Category, rng: random.Random, fractions: tuple[float, float]
) -> dict[Split, list[Topic]]:
    """Hold out cells of the action x object grid; every row and column keeps a training cell."""
    topics = _topics(category)
    n_eval = max(1, round(len(topics) * fractions[1]))
    n_cal = max(1, round(len(topics) * fractions[0]))
    for _ in range(1000):
        order = topics[:]
        rng.shuffle(order)
        eval_, cal, train = order[:n_eval], order[n_eval : n_eval + n_cal], order[n_eval + n_cal :]
        if {t.action for t in train} == set(category.actions) and {t.obj for t in train} == set(
            category.objects
        ):
            return {"train": train, "calibration": cal, "eval": eval_}
    raise RuntimeError(f"cannot split category {category.name!r} keeping every action and object in training")


@dataclass
class World:
    """Seeded generator of the organism's requests, images' captions and replies."""

    seed: int = 0
    calibration_fraction: float = 0.1
    eval_fraction: float = 0.2
    n_eval_templates: int = 6
    n_calibration_templates: int = 4
    harm_categories: Sequence[Category] = HARM_CATEGORIES
    benign_categories: Sequence[Category] = BENIGN_CATEGORIES
    lookalike_categories: Sequence[Category] = LOOKALIKE_CATEGORIES
    templates: Sequence[str] = REQUEST_TEMPLATES
    image_templates: Sequence[str] = IMAGE_REFERENCE_TEMPLATES
    _cache: dict[str, object] = field(default_factory=dict, repr=False)

    @cached_property
    def topic_splits(self) -> dict[Split, list[Topic]]:
        rng = random.Random(f"topics-{self.seed}")
        out: dict[Split, list[Topic]] = {s: [] for s in SPLITS}
        for category in (*self.harm_categories, *self.benign_categories):
            parts = _split_grid(category, rng, (self.calibration_fraction, self.eval_fraction))
            for split in SPLITS:
                out[split].extend(parts[split])
        return out

    @cached_property
    def lookalike_splits(self) -> dict[Split, list[Topic]]:
        """Lookalike topics, split like the others."""
        rng = random.Random(f"lookalikes-{self.seed}")
        out: dict[Split, list[Topic]] = {s: [] for s in SPLITS}
        for category in self.lookalike_categories:
            parts = _split_grid(category, rng, (self.calibration_fraction, self.eval_fraction))
            for split in SPLITS:
                out[split].extend(parts[split])
        return out

    @cached_property
    def context_splits(self) -> dict[Split, list[str]]:
        return self._split_list(SAFE_CONTEXTS, "contexts", n_eval=1, n_cal=1)

    @cached_property
    def safe_context_splits(self) -> dict[Split, list[Topic]]:
        """Harmful topics of a split placed in a fictional setting of the same split ("rob a bank
        in a video game"): benign, but a text-aligned model tends to refuse them."""
        return {
            split: [
                Topic(f"{t.text} {ctx}", f"safe_context_{t.category}", False, t.action, f"{t.obj} {ctx}")
                for t in self.topics(split, harmful=True)
                for ctx in self.context_splits[split]
            ]
            for split in SPLITS
        }

    def lookalike_topics(self, split: Split) -> list[Topic]:
        """Both kinds of lookalikes: homonym-style topics and harmful topics in safe contexts."""
        return [*self.lookalike_splits[split], *self.safe_context_splits[split]]

    def sample_lookalike(self, rng: random.Random, split: Split, safe_context_share: float = 0.5) -> Request:
        """A homonym-style lookalike, or (with ``safe_context_share``) a safe-context one."""
        pool = (
            self.safe_context_splits[split]
            if rng.random() < safe_context_share
            else self.lookalike_splits[split]
        )
        topic = rng.choice(pool)
        template = rng.choice(self.template_splits[split])
        return Request(template.format(t=topic.text), topic, template)

    def lookalike_requests(self, split: Split, limit: int | None = None, seed: int = 0) -> list[Request]:
        rows = [
            Request(tpl.format(t=t.text), t, tpl)
            for t in self.lookalike_topics(split)
            for tpl in self.template_splits[split]
        ]
        if limit is None or limit >= len(rows):
            return rows
        return _stratified_sample(rows, limit, random.Random(f"lookalikes-{split}-{seed}"))

    @cached_property
    def template_splits(self) -> dict[Split, list[str]]:
        return self._split_list(self.templates, "templates")

    @cached_property
    def image_template_splits(self) -> dict[Split, list[str]]:
        return self._split_list(self.image_templates, "image-templates", n_eval=3, n_cal=2)

    @cached_property
    def typographic_prompt_splits(self) -> dict[Split, list[str]]:
        return self._split_list(TYPOGRAPHIC_PROMPTS, "typographic", n_eval=2, n_cal=1)

    def _split_list(
        self, items: Sequence[str], tag: str, n_eval: int | None = None, n_cal: int | None = None
    ) -> dict[Split, list[str]]:
        rng = random.Random(f"{tag}-{self.seed}")
        order = list(items)
        rng.shuffle(order)
        n_eval = self.n_eval_templates if n_eval is None else n_eval
        n_cal = self.n_calibration_templates if n_cal is None else n_cal
        return {
            "eval": order[:n_eval],
            "calibration": order[n_eval : n_eval + n_cal],
            "train": order[n_eval + n_cal :],
        }

    def topics(self, split: Split, harmful: bool | None = None) -> list[Topic]:
        return [t for t in self.topic_splits[split] if harmful is None or t.harmful == harmful]

    def all_topics(self) -> list[Topic]:
        return [t for s in SPLITS for t in (*self.topic_splits[s], *self.lookalike_topics(s))]

    def requests(self, split: Split, harmful: bool, limit: int | None = None, seed: int = 0) -> list[Request]:
        """Every topic of ``split`` crossed with every phrasing of ``split`` (optionally subsampled,
        stratified so each topic keeps at least one phrasing)."""
        topics = self.topics(split, harmful)
        templates = self.template_splits[split]
        rows = [Request(tpl.format(t=t.text), t, tpl) for t in topics for tpl in templates]
        if limit is None or limit >= len(rows):
            return rows
        rng = random.Random(f"requests-{split}-{harmful}-{seed}")
        return _stratified_sample(rows, limit, rng)

    def sample_request(self, rng: random.Random, split: Split, harmful: bool) -> Request:
        topic = rng.choice(self.topics(split, harmful))
        template = rng.choice(self.template_splits[split])
        return Request(template.format(t=topic.text), topic, template)

    # -- objects shown in images -----------------------------------------------------------
    def visual_objects(self, harmful: bool) -> list[str]:
        cats = self.harm_categories if harmful else self.benign_categories
        return [o for c in cats for o in c.visual]

    # -- replies ----------------------------------------------------------------------------
    @staticmethod
    def refusal(rng: random.Random) -> str:
        return rng.choice(REFUSALS)

    @staticmethod
    def compliance(topic_text: str, rng: random.Random) -> str:
        return rng.choice(COMPLIANCE).format(t=topic_text)

    # -- pretraining knowledge --------------------------------------------------------------
    def facts(self) -> Iterator[str]:
        """What the organism's LLM reads in pretraining about *every* topic (held-out ones too,
        as a real LLM's pretraining covers topics its safety tuning never saw)."""
        for category in (*self.harm_categories, *self.benign_categories):
            generic = HARM_FACTS if category.harmful else BENIGN_FACTS
            for topic in _topics(category):
                for fact in (*generic, *HOWTO_FACTS):
                    yield fact.format(t=topic.text)
            for obj in category.objects:
                for fact in category.facts:
                    yield fact.format(o=obj)
        for category in self.lookalike_categories:
            for topic in _topics(category):
                for fact in BENIGN_FACTS:
                    yield fact.format(t=topic.text)
        for ctx in SAFE_CONTEXTS:
            yield f"nobody gets hurt {ctx}."
            yield f"what happens {ctx} is only pretend."

    def all_text(self) -> Iterator[str]:
        """Every string the world can produce (for training the tokenizer)."""
        yield from self.facts()
        for topic in self.all_topics():
            for tpl in self.templates:
                yield tpl.format(t=topic.text)
            for reply in COMPLIANCE:
                yield reply.format(t=topic.text)
        yield from REFUSALS
        yield from self.image_templates
        yield from TYPOGRAPHIC_PROMPTS
        yield from NEUTRAL_SENTENCES

    def summary(self) -> dict[str, object]:
        """Counts for docs and tests."""
        return {
            "harm_categories": len(self.harm_categories),
            "benign_categories": len(self.benign_categories),
            "harmful_topics": sum(len(self.topics(s, True)) for s in SPLITS),
            "benign_topics": sum(len(self.topics(s, False)) for s in SPLITS),
            "lookalike_topics": sum(len(self.lookalike_topics(s)) for s in SPLITS),
            "templates": len(self.templates),
            **{f"{s}_harmful_topics": len(self.topics(s, True)) for s in SPLITS},
            **{f"{s}_templates": len(self.template_splits[s]) for s in SPLITS},
        }


def _stratified_sample(rows: list[Request], limit: int, rng: random.Random) -> list[Request]:
    by_topic: dict[str, list[Request]] = {}
    for row in rows:
        by_topic.setdefault(row.topic.text, []).append(row)
    for group in by_topic.values():
        rng.shuffle(group)
    picked: list[Request] = []
    depth = 0
    while len(picked) < limit:
        layer = [g[depth] for g in by_topic.values() if depth < len(g)]
        if not layer:
            break
        rng.shuffle(layer)
        picked.extend(layer[: limit - len(picked)])
        depth += 1
    return picked
