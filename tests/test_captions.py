"""Captions and the prompt parser: every caption reads back into the scene it describes."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from kinetoscope.prompts.caption import heldout_prompts, load_prompts, short_prompts
from kinetoscope.world.captions import caption, describe, parse_prompt, satisfies
from kinetoscope.world.scene import (
    HELDOUT,
    OBJECT_KEYS,
    SCENE_KEYS,
    Obj,
    Scene,
    is_excluded,
    sample_scene,
    swap,
)


def object_keys(scene: Scene) -> Counter:
    """Multiset of what each object states; a still object has no speed."""
    return Counter(
        (o.shape, o.color, o.size, o.motion, None if o.motion == "still" else o.speed)
        for o in scene.objects
    )


def assert_same(got: Scene, want: Scene, text: str) -> None:
    assert (got.environment, got.time, got.camera) == (want.environment, want.time, want.camera), (
        text
    )
    assert object_keys(got) == object_keys(want), text


def test_detailed_captions_read_back_into_the_whole_scene():
    rng = np.random.default_rng(0)
    for i in range(2000):
        scene = sample_scene(rng)
        text = caption(scene, "detailed", seed=i)
        parsed = parse_prompt(text)
        assert parsed.unknown_words == [], text
        assert parsed.count == len(scene.objects), text
        assert_same(parsed.scene, scene, text)


def test_short_captions_read_back_into_what_they_state():
    rng = np.random.default_rng(1)
    omitted = Counter()
    for i in range(2000):
        scene = sample_scene(rng)
        text, stated = describe(scene, "short", seed=i)
        parsed = parse_prompt(text)
        assert parsed.unknown_words == [], text
        assert_same(parsed.scene, stated, text)
        assert satisfies(scene, parsed.scene), text  # states nothing false
        assert len(parsed.scene.objects) == len(scene.objects), text
        omitted.update(k for k in ("environment", "time", "camera") if getattr(stated, k) is None)
        omitted.update(
            k for o in stated.objects for k in ("color", "size") if getattr(o, k) is None
        )
    # Short prompts are how people type: they often leave things out.
    assert all(omitted[k] > 200 for k in ("environment", "time", "camera", "color", "size"))


def test_captions_are_deterministic_per_seed_and_varied():
    scene = sample_scene(np.random.default_rng(3), num_objects=2)
    assert caption(scene, "detailed", seed=5) == caption(scene, "detailed", seed=5)
    gen = np.random.default_rng(9)
    texts = {caption(scene, "detailed", rng=gen) for _ in range(200)}
    assert len(texts) > 150  # many phrasings of one scene, not one template
    words = Counter(w for t in texts for w in re.findall(r"[a-z]+", t.lower()))
    nouns = {"ball", "circle", "sphere", "disc", "box", "square", "cube", "block", "triangle"}
    shapes = {o.shape for o in scene.objects}
    used = {w for w in nouns if words[w]}
    assert len(used) >= 3 * len(shapes) - 1, used


def test_detailed_captions_stay_short_enough_for_a_byte_level_encoder():
    rng = np.random.default_rng(4)
    lengths = [caption(sample_scene(rng, num_objects=3), "detailed", i) for i in range(500)]
    assert max(len(t) for t in lengths) < 300


@pytest.mark.parametrize(
    "text, objects, scene_keys",
    [
        (
            "a red ball moves left while a blue box bounces",
            [("circle", "red", None, "left", None), ("square", "blue", None, "bouncing", None)],
            (None, None, None),
        ),
        ("Two RED balls!", [("circle", "red", None, None, None)] * 2, (None, None, None)),
        ("a ball and a box", [("circle",) + (None,) * 4, ("square",) + (None,) * 4], (None,) * 3),
        (
            "three small cubes bouncing in the snow",
            [("square", None, "small", "bouncing", None)] * 3,
            ("snowfield", None, None),
        ),
        (
            "red and blue spheres",
            [("circle", "red", None, None, None), ("circle", "blue", None, None, None)],
            (None, None, None),
        ),
        (
            "A big purple triangle in the desert after dark",
            [("triangle", "purple", "large", None, None)],
            ("desert", "night", None),
        ),
        (
            "zoom out, green wedge falling fast",
            [("triangle", "green", None, "down", "fast")],
            (None, None, "zoom out"),
        ),
        (
            "the camera stays still. A ball that is tiny and violet.",
            [("circle", "purple", "small", None, None)],
            (None, None, "static"),
        ),
        (
            "a slow cyan pyramid rising, the camera sweeps to the right over the waves",
            [("triangle", "cyan", None, "up", "slow")],
            ("ocean", None, "pan right"),
        ),
        ("sunny city streets", [], ("city", "day", None)),
    ],
)
def test_parse_attaches_attributes_to_their_objects(text, objects, scene_keys):
    parsed = parse_prompt(text)
    got = parsed.scene
    assert (got.environment, got.time, got.camera) == scene_keys
    assert object_keys(got) == Counter(objects)
    assert parsed.count == (len(objects) or None)
    assert parsed.unknown_words == []


def test_parse_lists_words_it_does_not_understand():
    parsed = parse_prompt("A dog is running on the beach with a red ball")
    assert parsed.unknown_words == ["dog", "beach"]
    assert object_keys(parsed.scene) == Counter([("circle", "red", None, None, None)])


def test_header_counts_objects_without_doubling_them():
    text = "Three shapes in a meadow by day: a red ball, a blue box and a green triangle."
    assert len(parse_prompt(text).scene.objects) == 3
    assert len(parse_prompt("three shapes").scene.objects) == 3
    assert len(parse_prompt("two shapes and a red ball").scene.objects) == 3


def test_satisfies_matches_objects_one_to_one_in_any_order():
    full = Scene("meadow", "day", "static", [Obj("circle", "red"), Obj("square", "blue")])
    assert satisfies(full, Scene(objects=[Obj(color="blue"), Obj(shape="circle")]))
    assert not satisfies(full, Scene(objects=[Obj(color="red"), Obj(shape="circle")]))
    assert not satisfies(full, Scene(time="night"))
    assert not satisfies(full, Scene(objects=[Obj(color="red")]))  # count differs


def test_unknown_detail_is_an_error():
    with pytest.raises(ValueError, match="detail"):
        caption(sample_scene(np.random.default_rng(0)), "long")


def test_shipped_prompt_sets_are_reproducible_and_state_what_they_claim():
    heldout, short = load_prompts("heldout"), load_prompts("short")
    assert heldout == heldout_prompts() and len(heldout) >= 200
    assert short == short_prompts() and len(short) >= 100
    for line in heldout:
        parsed = parse_prompt(line)
        assert parsed.unknown_words == [], line
        assert is_excluded(parsed.scene, HELDOUT), line  # states a held-out combination
        assert all(getattr(parsed.scene, k) for k in ("environment", "time", "camera")), line
    for line in short:
        parsed = parse_prompt(line)
        assert parsed.unknown_words == [] and parsed.scene.objects, line
        assert not is_excluded(parsed.scene, HELDOUT), line


def test_a_swap_changes_only_its_attribute_and_avoids_heldout():
    for i in range(40):
        rng = np.random.default_rng(i)
        scene = sample_scene(rng, exclude=HELDOUT)
        for key in (*OBJECT_KEYS, *SCENE_KEYS):
            other = swap(scene, key, rng)
            if other is None:  # only possible for a colour every other object holds, or held out
                continue
            assert not is_excluded(other, HELDOUT)
            changed = [
                k for a, b in zip(scene.objects, other.objects) for k in OBJECT_KEYS
                if getattr(a, k) != getattr(b, k)
            ]  # fmt: skip
            changed += [k for k in SCENE_KEYS if getattr(scene, k) != getattr(other, k)]
            assert changed == [key]
            assert getattr(scene.objects[0] if key in OBJECT_KEYS else scene, key) != getattr(
                other.objects[0] if key in OBJECT_KEYS else other, key
            )
    # A cyan object can never be swapped to moving up (held out): another motion is chosen.
    cyan = Scene("meadow", "day", "static", [Obj("circle", "cyan", "large", "left", "slow")])
    for i in range(20):
        assert swap(cyan, "motion", np.random.default_rng(i)).objects[0].motion != "up"
    # The only other time is held out for this object: no swap.
    white = Scene("desert", "day", "static", [Obj("square", "white", "large", "left", "slow")])
    assert swap(white, "time", np.random.default_rng(0)) is None
    # Colours stay distinct: the first object never takes the second's colour.
    two = Scene("meadow", "day", "static", [Obj("circle", "red"), Obj("square", "blue")])
    for i in range(20):
        assert swap(two, "color", np.random.default_rng(i)).objects[0].color not in ("red", "blue")
