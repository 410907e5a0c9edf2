"""The ShapeWorld scene graph: what a clip shows, and how random scenes are drawn.

A `Scene` with every field set is a full description that `render` turns into a video.
The same dataclasses with some fields left `None` are a *partial* scene: what a prompt
states (`parse_prompt`) or what the judge could read back.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import numpy as np

ENVIRONMENTS = ("meadow", "desert", "snowfield", "ocean", "city")
TIMES = ("day", "night")
CAMERAS = ("static", "pan left", "pan right", "zoom in", "zoom out")
SHAPES = ("circle", "square", "triangle")
COLORS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "white")
SIZES = ("small", "large")
MOTIONS = ("still", "left", "right", "up", "down", "bouncing")
SPEEDS = ("slow", "fast")

OBJECT_KEYS = ("shape", "color", "size", "motion", "speed")
SCENE_KEYS = ("environment", "time", "camera")
VOCAB = {
    "environment": ENVIRONMENTS,
    "time": TIMES,
    "camera": CAMERAS,
    "shape": SHAPES,
    "color": COLORS,
    "size": SIZES,
    "motion": MOTIONS,
    "speed": SPEEDS,
}
MAX_OBJECTS = 3

# Combinations that never appear in training, so held-out evaluation measures composition.
# A rule holds out every object that matches all its object keys inside a scene that
# matches all its scene keys.
HELDOUT: tuple[dict[str, str], ...] = (
    {"shape": "triangle", "color": "purple"},
    {"color": "cyan", "motion": "up"},
    {
        "shape": "square",
        "color": "white",
        "size": "large",
        "environment": "desert",
        "time": "night",
    },
)


@dataclass
class Obj:
    """One shape. `x`, `y` are its starting centre in [0, 1] of the frame (y down); `depth`
    orders occlusion (larger is nearer and drawn last)."""

    shape: str | None = None
    color: str | None = None
    size: str | None = None
    motion: str | None = None
    speed: str | None = None
    x: float | None = None
    y: float | None = None
    depth: int | None = None


@dataclass
class Scene:
    environment: str | None = None
    time: str | None = None
    camera: str | None = None
    objects: list[Obj] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        d = dict(d)
        objects = [Obj(**o) for o in d.pop("objects", [])]
        return cls(**d, objects=objects)

    def validate(self) -> None:
        """Raises ValueError naming the first field whose value is not in the vocabulary."""
        for key in SCENE_KEYS:
            v = getattr(self, key)
            if v is not None and v not in VOCAB[key]:
                raise ValueError(f"scene.{key}={v!r} is not one of {VOCAB[key]}")
        if len(self.objects) > MAX_OBJECTS:
            raise ValueError(
                f"a scene holds at most {MAX_OBJECTS} objects, got {len(self.objects)}"
            )
        for i, o in enumerate(self.objects):
            for key in OBJECT_KEYS:
                v = getattr(o, key)
                if v is not None and v not in VOCAB[key]:
                    raise ValueError(f"objects[{i}].{key}={v!r} is not one of {VOCAB[key]}")


def rule_matches(rule: dict[str, str], scene: Scene, obj: Obj) -> bool:
    """True when `obj` in `scene` has every attribute the rule names."""
    for key, value in rule.items():
        have = getattr(scene, key) if key in SCENE_KEYS else getattr(obj, key)
        if have != value:
            return False
    return True


def is_excluded(scene: Scene, exclude: tuple[dict[str, str], ...] | list = ()) -> bool:
    """True when any object of the scene falls under any held-out rule."""
    return any(rule_matches(r, scene, o) for r in exclude for o in scene.objects)


def distinct_colors(scene: Scene) -> bool:
    """True when no two objects of the scene share a colour (so words and the judge can tell
    them apart)."""
    colors = [o.color for o in scene.objects]
    return len(set(colors)) == len(colors)


def swap(
    scene: Scene, key: str, rng: np.random.Generator, exclude: tuple | list = HELDOUT
) -> Scene | None:
    """Returns a copy of the scene with `key` (of the scene, or of its first object) set to
    another value drawn at random, or None when every other value falls under `exclude`
    (or would give two objects one colour)."""

    def holder(s: Scene) -> Scene | Obj:
        return s.objects[0] if key in OBJECT_KEYS else s

    current = getattr(holder(scene), key)
    for value in rng.permutation([v for v in VOCAB[key] if v != current]):
        other = copy.deepcopy(scene)
        setattr(holder(other), key, str(value))
        if distinct_colors(other) and not is_excluded(other, exclude):
            return other
    return None


def _random_object(rng: np.random.Generator, depth: int) -> Obj:
    return Obj(
        shape=str(rng.choice(SHAPES)),
        color=str(rng.choice(COLORS)),
        size=str(rng.choice(SIZES)),
        motion=str(rng.choice(MOTIONS)),
        speed=str(rng.choice(SPEEDS)),
        x=float(rng.uniform(0.2, 0.8)),
        y=float(rng.uniform(0.25, 0.75)),
        depth=depth,
    )


def sample_scene(
    rng: np.random.Generator,
    exclude: tuple[dict[str, str], ...] | list = (),
    num_objects: int | None = None,
) -> Scene:
    """Returns a random full scene in which no object falls under a rule of `exclude`.

    Objects of one scene have distinct colours, so a caption or the judge can always tell
    them apart. Rejection sampling: every rule excludes a small share of scenes.
    """
    for _ in range(10_000):
        n = num_objects or int(rng.integers(1, MAX_OBJECTS + 1))
        scene = Scene(
            environment=str(rng.choice(ENVIRONMENTS)),
            time=str(rng.choice(TIMES)),
            camera=str(rng.choice(CAMERAS)),
            objects=[_random_object(rng, depth=i) for i in range(n)],
        )
        if distinct_colors(scene) and not is_excluded(scene, exclude):
            return scene
    raise ValueError(f"exclude rules {exclude} leave no scene to sample")


def sample_heldout_scene(
    rng: np.random.Generator, rules: tuple[dict[str, str], ...] = HELDOUT
) -> Scene:
    """Returns a random scene whose first object falls under one of `rules` (for evaluation)."""
    rule = rules[int(rng.integers(len(rules)))]
    for _ in range(10_000):
        scene = sample_scene(rng)
        obj = scene.objects[0]
        for key, value in rule.items():
            setattr(scene if key in SCENE_KEYS else obj, key, value)
        if distinct_colors(scene):
            return scene
    raise ValueError(f"could not build a scene for rule {rule}")
