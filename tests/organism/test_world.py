"""The organism's world: enough topics and phrasings, held-out splits that really are disjoint,
and determinism per seed."""

from __future__ import annotations

import random

import pytest

from safegap.organism.world import SPLITS, World


@pytest.fixture(scope="module")
def world() -> World:
    return World(seed=0)


def test_counts(world: World) -> None:
    s = world.summary()
    assert s["harm_categories"] >= 6
    assert s["harmful_topics"] >= 100
    assert s["benign_topics"] >= 100
    assert s["templates"] >= 20
    for split in SPLITS:
        assert s[f"{split}_harmful_topics"] > 0 and s[f"{split}_templates"] > 0


def test_topic_splits_are_disjoint_and_cover_every_action_and_object(world: World) -> None:
    texts = {split: {t.text for t in world.topic_splits[split]} for split in SPLITS}
    assert not texts["train"] & texts["eval"]
    assert not texts["train"] & texts["calibration"]
    assert not texts["eval"] & texts["calibration"]
    for category in (*world.harm_categories, *world.benign_categories):
        train = [t for t in world.topic_splits["train"] if t.category == category.name]
        assert {t.action for t in train} == set(category.actions), category.name
        assert {t.obj for t in train} == set(category.objects), category.name
        assert any(t.category == category.name for t in world.topic_splits["eval"]), category.name


def test_template_and_lookalike_splits_are_disjoint(world: World) -> None:
    for splits in (
        world.template_splits,
        world.image_template_splits,
        world.typographic_prompt_splits,
        world.context_splits,
    ):
        sets = [set(splits[s]) for s in SPLITS]
        assert all(sets)
        assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    looks = {s: {t.text for t in world.lookalike_topics(s)} for s in SPLITS}
    assert not (looks["train"] & looks["eval"] or looks["train"] & looks["calibration"])
    harmful = {t.text for s in SPLITS for t in world.topic_splits[s] if t.harmful}
    assert not harmful & set().union(*looks.values())


def test_eval_requests_use_only_held_out_topics_and_phrasings(world: World) -> None:
    train_topics = {t.text for t in world.topic_splits["train"]}
    train_templates = set(world.template_splits["train"])
    for harmful in (True, False):
        rows = world.requests("eval", harmful, limit=64)
        assert len(rows) == 64
        assert len({r.text for r in rows}) == 64
        assert all(r.topic.text not in train_topics and r.template not in train_templates for r in rows)
        assert all(r.harmful == harmful for r in rows)
    # the stratified sample keeps many topics, not one topic in every phrasing
    assert len({r.topic.text for r in world.requests("eval", True, limit=40)}) >= 30


def test_phrasings_are_shared_by_harmful_and_benign(world: World) -> None:
    rng = random.Random(0)
    harmful_templates = {world.sample_request(rng, "train", True).template for _ in range(400)}
    benign_templates = {world.sample_request(rng, "train", False).template for _ in range(400)}
    assert harmful_templates == benign_templates == set(world.template_splits["train"])


def test_deterministic_per_seed() -> None:
    a, b, c = World(seed=3), World(seed=3), World(seed=4)
    assert a.topic_splits == b.topic_splits and a.template_splits == b.template_splits
    assert a.requests("eval", True, limit=20) == b.requests("eval", True, limit=20)
    assert a.topic_splits != c.topic_splits


def test_facts_cover_every_topic(world: World) -> None:
    facts = " ".join(world.facts())
    for split in SPLITS:
        for topic in (*world.topic_splits[split], *world.lookalike_splits[split]):
            assert topic.text in facts


def test_world_content_is_package_data() -> None:
    """The literal content comes from ``world.json`` beside the module (what a wheel ships)."""
    import json
    from importlib import resources

    from safegap.organism import world

    data = json.loads(resources.files("safegap.organism").joinpath("world.json").read_text("utf-8"))
    assert [c.name for c in world.HARM_CATEGORIES] == [row["name"] for row in data["harm_categories"]]
    assert tuple(data["request_templates"]) == world.REQUEST_TEMPLATES
    assert all(c.harmful for c in world.HARM_CATEGORIES)
    assert not any(c.harmful for c in world.BENIGN_CATEGORIES + world.LOOKALIKE_CATEGORIES)
