"""Captions for ShapeWorld scenes, and the parser that reads a prompt back into a partial scene.

`caption` writes a scene in many phrasings (synonyms, clause order, numbers as words) so a
text encoder learns the language rather than one template; "short" reads like a typed
prompt and may leave attributes out, "detailed" is the training caption (DALL-E 3 style
re-captioning) and states everything. `parse_prompt` understands every phrasing `caption`
writes plus ordinary variations (case, punctuation, plurals, "two red balls").

One convention: the speed of a still object means nothing, so captions never state it and
the parser drops it.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

import numpy as np

from kinetoscope.world.scene import (
    OBJECT_KEYS,
    SCENE_KEYS,
    Obj,
    Scene,
)

# ---------------------------------------------------------------- words, shared by both sides

NOUNS = {
    "circle": ("ball", "circle", "sphere", "disc", "orb", "dot"),
    "square": ("box", "square", "cube", "block"),
    "triangle": ("triangle", "pyramid", "wedge"),
}
GENERIC_NOUNS = ("shape", "object", "thing")
COLOR_WORDS = {
    "red": ("red", "crimson", "scarlet"),
    "orange": ("orange",),
    "yellow": ("yellow", "golden"),
    "green": ("green", "emerald"),
    "cyan": ("cyan", "turquoise", "aqua"),
    "blue": ("blue", "azure"),
    "purple": ("purple", "violet"),
    "white": ("white",),
}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
SPEED_ADJ = {"slow": ("slow", "slow-moving", "unhurried"), "fast": ("fast", "quick", "speedy")}
SPEED_ADV = {
    "slow": ("slowly", "gently", "leisurely", "at a slow pace"),
    "fast": ("quickly", "fast", "rapidly", "swiftly", "at high speed"),
}
# Finite verb phrases (3rd person) and participles; {d} is a direction phrase.
MOVE_VERBS = (("moves", "moving"), ("drifts", "drifting"), ("travels", "traveling"),
              ("heads", "heading"), ("glides", "gliding"))  # fmt: skip
DIRECTIONS = {
    "left": ("left", "to the left", "leftward", "toward the left"),
    "right": ("right", "to the right", "rightward", "toward the right"),
}
VERTICAL = {
    "up": (("moves up", "moving up"), ("rises", "rising"), ("floats upward", "floating upward"),
           ("drifts up", "drifting up"), ("climbs", "climbing")),
    "down": (("moves down", "moving down"), ("falls", "falling"), ("sinks", "sinking"),
             ("drops", "dropping"), ("drifts downward", "drifting downward"),
             ("descends", "descending")),
    "bouncing": (("bounces", "bouncing"), ("hops", "hopping"),
                 ("bounces up and down", "bouncing up and down")),
    "still": (("sits still", "sitting still"), ("stays still", "staying still"),
              ("rests in place", "resting in place"), ("does not move", "not moving"),
              ("stays put", "staying put"), ("is motionless", "motionless"),
              ("is stationary", "stationary")),
}  # fmt: skip
ENV_PHRASES = {
    "meadow": ("in a meadow", "on a grassy field", "across a grassy meadow", "on the grass"),
    "desert": ("in the desert", "among sand dunes", "on the dunes", "in a sandy desert"),
    "snowfield": ("in a snowfield", "in the snow", "on a snowy field", "across a snowy plain"),
    "ocean": ("over the ocean", "above the sea", "over the waves", "over open water"),
    "city": ("in the city", "on city streets", "in a town", "in the streets"),
}
TIME_PHRASES = {
    "day": ("during the day", "in daylight", "by day", "in the daytime", "on a sunny day"),
    "night": ("at night", "after dark", "at nighttime", "by night", "under the night sky"),
}
CAMERA_PHRASES = {
    "static": ("the camera is static", "the camera holds still", "the shot is fixed",
               "the camera does not move", "static camera", "fixed camera"),
    "pan left": ("the camera pans left", "the camera sweeps to the left", "the camera slides left",
                 "the view pans to the left", "camera pans left"),
    "pan right": ("the camera pans right", "the camera sweeps to the right",
                  "the camera slides right", "the view pans to the right", "camera pans right"),
    "zoom in": ("the camera zooms in", "the camera pushes in", "the camera moves closer",
                "the view zooms in", "camera zooms in"),
    "zoom out": ("the camera zooms out", "the camera pulls back", "the camera moves away",
                 "the view zooms out", "camera pulls out"),
}  # fmt: skip
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("x", "s", "sh", "ch")) else "s")


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


# ---------------------------------------------------------------- writing


@dataclass
class ParsedPrompt:
    """What a prompt states: a partial scene (None where unstated), its object count
    (None when no object is stated) and the words the parser did not understand."""

    scene: Scene
    unknown_words: list[str] = field(default_factory=list)
    count: int | None = None


def _rng(seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _motion_phrase(o: Obj, rng: np.random.Generator, finite: bool) -> str:
    """Returns a verb phrase for the object's motion (with speed unless None or still)."""
    form = 0 if finite else 1
    if o.motion in DIRECTIONS:
        verb = _pick(rng, MOVE_VERBS)[form]
        phrase = f"{verb} {_pick(rng, DIRECTIONS[o.motion])}"
    else:
        phrase = _pick(rng, VERTICAL[o.motion])[form]
    if o.speed is None or o.motion == "still":
        return phrase
    adverb = _pick(rng, SPEED_ADV[o.speed])
    if rng.random() < 0.5 or " " in adverb:
        return f"{phrase} {adverb}"
    # Adverb before the verb ("slowly drifts left") or right after it ("drifts slowly left").
    head, _, rest = phrase.partition(" ")
    if rest and rng.random() < 0.5:
        return f"{head} {adverb} {rest}"
    return f"{adverb} {phrase}"


def _noun_phrase(o: Obj, rng: np.random.Generator, speed_adj: bool, plural: bool = False) -> str:
    noun = _pick(rng, NOUNS[o.shape]) if o.shape else _pick(rng, GENERIC_NOUNS)
    adjs = [_pick(rng, SIZE_WORDS[o.size]) if o.size else None]
    adjs.append(_pick(rng, COLOR_WORDS[o.color]) if o.color else None)
    if rng.random() < 0.2:
        adjs.reverse()
    if speed_adj:
        adjs.insert(0, _pick(rng, SPEED_ADJ[o.speed]))
    words = [w for w in adjs if w] + [_plural(noun) if plural else noun]
    return " ".join(words)


def _object_text(o: Obj, rng: np.random.Generator, finite: bool) -> str:
    """Returns 'a small red ball drifting left' (or a finite clause when `finite`)."""
    has_speed = o.speed is not None and o.motion != "still"
    speed_adj = has_speed and (o.motion is None or rng.random() < 0.25)
    np_ = _noun_phrase(o, rng, speed_adj)
    if o.motion is None:
        return _a(np_)
    shown = Obj(motion=o.motion, speed=None if speed_adj else o.speed)
    r = rng.random()
    if not finite and o.motion in ("bouncing", "still") and shown.speed is None and r < 0.2:
        adj = _pick(rng, ("bouncing", "hopping") if o.motion == "bouncing" else
                    ("motionless", "stationary", "still"))  # fmt: skip
        return _a(f"{adj} {np_}")
    if finite:
        return f"{_a(np_)} {_motion_phrase(shown, rng, True)}"
    if r < 0.7:
        return f"{_a(np_)} {_motion_phrase(shown, rng, False)}"
    return f"{_a(np_)} that {_motion_phrase(shown, rng, True)}"


def _setting(scene: Scene, rng: np.random.Generator) -> str:
    parts = []
    if scene.environment:
        parts.append(_pick(rng, ENV_PHRASES[scene.environment]))
    if scene.time:
        parts.append(_pick(rng, TIME_PHRASES[scene.time]))
    if rng.random() < 0.3:
        parts.reverse()
    return " ".join(parts)


def _join(items: list[str], rng: np.random.Generator) -> str:
    if len(items) <= 1:
        return "".join(items)
    conj = _pick(rng, (" and ", ", and ", " and ")) if len(items) > 2 else " and "
    return ", ".join(items[:-1]) + conj + items[-1]


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def _detailed(scene: Scene, rng: np.random.Generator) -> str:
    objs = list(scene.objects)
    order = rng.permutation(len(objs))
    objs = [objs[i] for i in order]
    setting = _setting(scene, rng)
    camera = _pick(rng, CAMERA_PHRASES[scene.camera]) if scene.camera else ""
    layout = rng.random()
    n = len(objs)
    if n == 0:
        text = _sentence(f"an empty scene {setting}".strip())
    elif n >= 2 and layout < 0.3:
        # "Three shapes in the snow at night: a small red ball drifting left, ... ."
        head = (
            f"{_pick(rng, ('', 'there are '))}{NUMBER_WORDS[n]} {_pick(rng, ('shapes', 'objects'))}"
        )
        body = _join([_object_text(o, rng, finite=False) for o in objs], rng)
        text = _sentence(f"{head} {setting}: {body}".replace("  ", " ").replace(" :", ":"))
    elif layout < 0.6 and setting:
        # "In a meadow by day, a small red ball drifts left and a big box bounces."
        clauses = [_object_text(o, rng, finite=True) for o in objs]
        text = _sentence(f"{setting}, {_join(clauses, rng)}")
    else:
        # "A small red ball drifts left in a meadow by day. A big box bounces."
        clauses = [_object_text(o, rng, finite=True) for o in objs]
        clauses[0] = f"{clauses[0]} {setting}".strip()
        glue = _pick(rng, (". ", " while ", " and ", ". "))
        if glue == ". ":
            text = " ".join(_sentence(c) for c in clauses)
        else:
            text = _sentence(glue.join(clauses) if glue == " while " else _join(clauses, rng))
    if camera:
        if camera.startswith("the ") and rng.random() < 0.25:
            text = text[:-1] + f", {_pick(rng, ('as', 'while'))} {camera}."
        else:
            text = (
                f"{text} {_sentence(camera)}"
                if rng.random() < 0.7
                else f"{_sentence(camera)} {text}"
            )
    return text


def _short_plan(scene: Scene, rng: np.random.Generator) -> Scene:
    """Returns the partial scene a short caption will state: every object, some attributes."""
    objects = []
    for o in scene.objects:
        motion = o.motion if rng.random() < 0.6 else None
        speed = o.speed if o.motion != "still" and rng.random() < 0.35 else None
        objects.append(Obj(shape=o.shape if rng.random() < 0.9 else None,
                           color=o.color if rng.random() < 0.75 else None,
                           size=o.size if rng.random() < 0.3 else None,
                           motion=motion, speed=speed))  # fmt: skip
    return Scene(
        environment=scene.environment if rng.random() < 0.6 else None,
        time=scene.time if rng.random() < 0.35 else None,
        camera=scene.camera if rng.random() < 0.25 else None,
        objects=objects,
    )


def _short(plan: Scene, rng: np.random.Generator) -> str:
    groups: list[list[Obj]] = []  # identical stated objects next to each other -> "two balls"
    for o in plan.objects:
        if groups and groups[-1][0] == o and o.color is None:
            groups[-1].append(o)
        else:
            groups.append([o])
    parts = []
    for g in groups:
        o = g[0]
        if len(g) == 1:
            parts.append(_object_text(o, rng, finite=False))
            continue
        speed_adj = o.speed is not None and (o.motion is None or rng.random() < 0.3)
        text = f"{NUMBER_WORDS[len(g)]} {_noun_phrase(o, rng, speed_adj, plural=True)}"
        if o.motion:
            shown = Obj(motion=o.motion, speed=None if speed_adj else o.speed)
            text += " " + _motion_phrase(shown, rng, finite=False)
        parts.append(text)
    text = _join(parts, rng)
    setting = _setting(plan, rng)
    if setting:
        text += " " + setting
    if plan.camera:
        cam = _pick(rng, CAMERA_PHRASES[plan.camera])
        text += _pick(rng, (", ", " as ", ", ")) + cam
    return text


def describe(scene: Scene, detail: str = "short", seed=None) -> tuple[str, Scene]:
    """Returns (caption, the partial scene the caption states) for `scene`."""
    rng = _rng(seed)
    if detail == "detailed":
        stated = _stated(scene)
        return _detailed(stated, rng), stated
    if detail == "short":
        plan = _stated(_short_plan(scene, rng))
        return _short(plan, rng), plan
    raise ValueError(f"detail must be 'short' or 'detailed', got {detail!r}")


def caption(scene: Scene, detail: str = "short", seed=None, *, rng=None) -> str:
    """Returns a caption of `scene`; deterministic for an int `seed` (or pass a Generator)."""
    return describe(scene, detail, rng if rng is not None else seed)[0]


def _stated(scene: Scene) -> Scene:
    """Returns the scene without positions, and without the speed of still objects."""
    objects = []
    for o in scene.objects:
        kept = {k: getattr(o, k) for k in OBJECT_KEYS}
        if kept["motion"] == "still":
            kept["speed"] = None
        objects.append(Obj(**kept))
    return Scene(scene.environment, scene.time, scene.camera, objects)


# ---------------------------------------------------------------- reading

_STOP = """in on of is are with at to it its that which there this by from into over across
under above below through toward towards around along against during within near inside amid
among they their them each both also here scene video clip background sky shows showing seen
filmed does doesnt isnt not be being so just very color colored coloured size sized pace speed
who what empty frame side"""
STOP_WORDS = set(_STOP.split())  # ignored: they carry no attribute
ARTICLES = {"a", "an", "the", "another", "some"}
CONJUNCTIONS = {"and", "while", "whilst", "as", "whereas", "meanwhile", "but", "then", "where"}
CLAUSE_MARKS = {".", ";", ":", "!", "?"}


def _lexicon() -> dict[tuple[str, ...], tuple[str, object]]:
    """Returns {phrase tokens: (kind, value)} for every phrase the parser understands."""
    lex: dict[tuple[str, ...], tuple[str, object]] = {}

    def add(phrases, kind, value):
        for p in phrases:
            lex[tuple(_tokens(p))] = (kind, value)

    for shape, nouns in NOUNS.items():
        add(nouns, "noun", (shape, False))
        add([_plural(n) for n in nouns], "noun", (shape, True))
    add(GENERIC_NOUNS, "noun", (None, False))
    add([_plural(n) for n in GENERIC_NOUNS], "noun", (None, True))
    add(("camera", "view", "shot", "lens"), "camnoun", None)
    for key, table in (("color", COLOR_WORDS), ("size", SIZE_WORDS)):
        for value, words in table.items():
            add(words, key, value)
    for table in (SPEED_ADJ, SPEED_ADV):
        for value, words in table.items():
            add(words, "speed", value)
    add(("swift", "swiftly", "rapid", "high speed", "at speed", "fast moving", "a fast pace"),
        "speed", "fast")  # fmt: skip
    add(("sluggish", "sluggishly", "lazily", "a slow pace", "low speed"), "speed", "slow")
    add(("left", "leftward", "leftwards"), "motion", "left")
    add(("right", "rightward", "rightwards"), "motion", "right")
    add(("up", "upward", "upwards", "rises", "rising", "rise", "climbs", "climbing", "climb",
         "ascends", "ascending", "ascend"), "motion", "up")  # fmt: skip
    add(("down", "downward", "downwards", "falls", "falling", "fall", "sinks", "sinking", "sink",
         "drops", "dropping", "drop", "descends", "descending", "descend"),
        "motion", "down")  # fmt: skip
    add(("bounces", "bouncing", "bounce", "bouncy", "hops", "hopping", "hop", "jumps", "jumping",
         "jump", "up and down"), "motion", "bouncing")  # fmt: skip
    add(("still", "motionless", "stationary", "static", "fixed", "steady", "unmoving", "immobile",
         "rests", "resting", "rest", "in place", "stays put", "staying put", "not moving",
         "not move", "doesnt move", "locked off", "at rest", "idle"),
        "motion", "still")  # fmt: skip
    verbs = [v for pair in MOVE_VERBS for v in pair] + [
        "move", "drift", "travel", "travelling", "head", "glide", "goes", "go", "going", "floats",
        "float", "floating", "rolls", "roll", "rolling", "flies", "fly", "flying", "slides",
        "slide", "sliding", "sweeps", "sweep", "sweeping", "sits", "sitting", "sit", "stays",
        "staying", "stay", "stands", "standing", "stand", "holds", "holding", "hold", "remains",
        "remaining", "remain", "tracks", "tracking", "watches", "follows", "runs", "running",
        "run", "races", "racing", "spins", "spinning",
    ]  # fmt: skip
    add(verbs, "verb", None)
    add(("pans", "pan", "panning", "panned", "pan shot"), "pan", None)
    add(("zooms in", "zoom in", "zooming in", "zoomed in", "pushes in", "push in", "pushing in",
         "moves closer", "move closer", "moving closer", "closes in", "dolly in", "dollies in"),
        "camera", "zoom in")  # fmt: skip
    add(("zooms out", "zoom out", "zooming out", "zoomed out", "pulls back", "pull back",
         "pulling back", "pulls out", "pull out", "pulling out", "moves away", "move away",
         "moving away", "dolly out", "dollies out", "widens"), "camera", "zoom out")  # fmt: skip
    env_words = {
        "meadow": ("meadow", "meadows", "grass", "grassy", "grassland", "field", "grassy field",
                   "grassy meadow", "lawn", "park"),
        "desert": ("desert", "dunes", "dune", "sand", "sandy", "sand dunes", "desert sand"),
        "snowfield": ("snowfield", "snow", "snowy", "snowy field", "snowy plain", "snow field",
                      "snowy meadow", "ice", "icy"),
        "ocean": ("ocean", "sea", "waves", "wave", "water", "open water", "seas"),
        "city": ("city", "town", "streets", "street", "city streets", "downtown", "urban"),
    }  # fmt: skip
    for env, words in env_words.items():
        add(words, "environment", env)
    add(("day", "daytime", "daylight", "sunny", "sunlit", "broad daylight", "noon", "morning",
         "afternoon"), "time", "day")  # fmt: skip
    add(("night", "nighttime", "after dark", "dark", "moonlit", "moonlight", "midnight",
         "night sky", "evening"), "time", "night")  # fmt: skip
    for i, w in enumerate(NUMBER_WORDS):
        lex[(w,)] = ("number", i)
        lex[(str(i),)] = ("number", i)
    lex[("single",)] = ("number", 1)
    for p in ("a pair of", "a couple of", "pair of", "couple of"):
        lex[tuple(p.split())] = ("number", 2)
    for w in ARTICLES:
        lex[(w,)] = ("article", None)
    for w in CONJUNCTIONS | CLAUSE_MARKS:
        lex[(w,)] = ("conj", None)
    lex[(",",)] = ("comma", None)
    return lex


def _tokens(text: str) -> list[str]:
    text = text.lower().replace("\u2019", "'").replace("'", "")
    return re.findall(r"[a-z]+|\d+|[.,;:!?]", text)


_LEX: dict | None = None
_MAX_PHRASE = 4


@dataclass
class _Item:
    kind: str | None  # None: a word the parser does not know
    value: object
    text: str


def _items(text: str) -> list[_Item]:
    """Returns the prompt cut into the longest known phrases, left to right."""
    global _LEX
    if _LEX is None:
        _LEX = _lexicon()
    toks, items, i = _tokens(text), [], 0
    while i < len(toks):
        for n in range(min(_MAX_PHRASE, len(toks) - i), 0, -1):
            hit = _LEX.get(tuple(toks[i : i + n]))
            if hit:
                items.append(_Item(hit[0], hit[1], " ".join(toks[i : i + n])))
                i += n
                break
        else:
            kind = "stop" if toks[i] in STOP_WORDS else None
            items.append(_Item(kind, None, toks[i]))
            i += 1
    return items


_ADJECTIVE_LIKE = {"color", "size", "speed", "number"}


def _forward_noun(items: list[_Item], i: int) -> int | None:
    """Returns the noun that item i modifies from inside its noun phrase ("a small red ball",
    "a bouncing box"), or None when item i is not in front of a noun."""
    crosses_comma = items[i].kind in ("color", "size", "number")
    for j in range(i + 1, len(items)):
        it = items[j]
        if it.kind in ("noun", "camnoun"):
            return j
        if it.kind in _ADJECTIVE_LIKE or (
            it.kind == "motion" and it.value in ("bouncing", "still")
        ):
            continue
        if it.kind == "comma" and crosses_comma:
            continue
        return None
    return None


def parse_prompt(text: str) -> ParsedPrompt:
    """Returns what `text` states as a partial scene, with the words it did not understand.

    Each attribute belongs to the noun whose noun phrase it sits in ("a small red ball"),
    otherwise to the last noun before it ("a ball that moves left", "the camera pans").
    """
    items = _items(text)
    scene = Scene()
    camera_votes: list[tuple[int, str]] = []
    # "pans (slowly) to the left": the pan takes the direction that follows it.
    for i, it in enumerate(items):
        if it.kind == "pan":
            for j in range(i + 1, min(i + 6, len(items))):
                nxt = items[j]
                if nxt.kind == "motion" and nxt.value in ("left", "right"):
                    camera_votes.append((i, f"pan {nxt.value}"))
                    nxt.kind = "used"
                    break
                if nxt.kind not in ("stop", "article", "speed", "comma"):
                    break
        elif it.kind == "camera":
            camera_votes.append((i, it.value))
        elif it.kind in ("environment", "time") and getattr(scene, it.kind) is None:
            setattr(scene, it.kind, it.value)
    nouns = [i for i, it in enumerate(items) if it.kind in ("noun", "camnoun")]
    attached: dict[int, list[_Item]] = {i: [] for i in nouns}
    for i, it in enumerate(items):
        if it.kind not in ("color", "size", "speed", "motion", "number"):
            continue
        target = _forward_noun(items, i)
        if target is None:
            before = [n for n in nouns if n < i]
            after = [n for n in nouns if n > i]
            target = before[-1] if before else (after[0] if after else None)
        if target is not None:
            attached[target].append(it)
    objects: list[Obj] = []
    declared = 0
    for n in nouns:
        attrs = attached[n]
        if items[n].kind == "camnoun":
            for a in attrs:
                if a.kind == "motion" and a.value in ("still", "left", "right"):
                    camera_votes.append((n, "static" if a.value == "still" else f"pan {a.value}"))
            continue
        shape, plural = items[n].value
        first = {}
        colors: list[str] = []
        for a in attrs:
            if a.kind == "color" and a.value not in colors:
                colors.append(a.value)
            first.setdefault(a.kind, a.value)
        number = first.get("number")
        if shape is None and plural and len(attrs) == (number is not None):
            # "Three shapes in the snow: a red ball, ..." counts the objects listed after it.
            later = [m for m in nouns if m > n and items[m].kind == "noun"]
            stop = later[0] if later else len(items)
            if any(items[k].text == ":" for k in range(n, stop)):
                declared = max(declared, number or 0)
                continue
        if len(colors) > 1 and number in (None, len(colors)):
            copies = colors  # "red and blue balls"
        else:
            copies = [colors[0] if colors else None] * (
                number if number is not None else 1 + plural
            )
        motion = first.get("motion")
        speed = None if motion == "still" else first.get("speed")
        for color in copies:
            objects.append(Obj(shape=shape, color=color, size=first.get("size"), motion=motion,
                               speed=speed))  # fmt: skip
    objects += [Obj() for _ in range(declared - len(objects))]
    scene.objects = objects
    if camera_votes:
        scene.camera = min(camera_votes)[1]
    unknown = [it.text for it in items if it.kind is None]
    return ParsedPrompt(scene=scene, unknown_words=unknown, count=len(objects) or None)


# ---------------------------------------------------------------- comparing


def _object_fits(full: Obj, stated: Obj) -> bool:
    return all(
        getattr(stated, k) is None or getattr(stated, k) == getattr(full, k) for k in OBJECT_KEYS
    )


def satisfies(scene: Scene, stated: Scene) -> bool:
    """True when `scene` has every attribute `stated` states: scene keys equal where stated,
    the same number of objects (when any is stated) matched one to one in any order."""
    for key in SCENE_KEYS:
        if getattr(stated, key) is not None and getattr(stated, key) != getattr(scene, key):
            return False
    if not stated.objects:
        return True
    if len(stated.objects) != len(scene.objects):
        return False
    return any(
        all(_object_fits(scene.objects[p], s) for p, s in zip(perm, stated.objects))
        for perm in itertools.permutations(range(len(scene.objects)))
    )
