"""Prompt expansion: a short user prompt rewritten as a detailed caption like the training ones.

The rule-based expander keeps everything the prompt states and draws the rest from the
world's prior (held-out combinations allowed: a user may ask for them). The "openai"
expander asks any OpenAI-compatible chat endpoint for the caption, checks that the reply
keeps every stated attribute, and falls back to the rules with a warning when it does not.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
import warnings

import numpy as np

from kinetoscope.world.captions import caption, parse_prompt, satisfies
from kinetoscope.world.scene import (
    COLORS,
    MAX_OBJECTS,
    MOTIONS,
    OBJECT_KEYS,
    SCENE_KEYS,
    Obj,
    Scene,
    sample_scene,
)

DEFAULT_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
KEY_ENV = ("KINETOSCOPE_EXPANDER_KEY", "OPENAI_API_KEY")


def expand_scene(prompt: str, seed: int | np.random.Generator = 0) -> Scene:
    """Returns a full scene with every attribute `prompt` states, the rest drawn at random
    but for size: an object whose size is not stated is large."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    stated = parse_prompt(prompt).scene
    wanted = stated.objects
    if len(wanted) > MAX_OBJECTS:
        warnings.warn(
            f"the prompt states {len(wanted)} objects; a scene holds at most {MAX_OBJECTS}",
            stacklevel=2,
        )
        wanted = wanted[:MAX_OBJECTS]
    n = len(wanted) or int(rng.integers(1, 3))
    scene = sample_scene(rng, exclude=(), num_objects=n)
    for key in SCENE_KEYS:
        if getattr(stated, key) is not None:
            setattr(scene, key, getattr(stated, key))
    wanted = wanted + [Obj()] * (n - len(wanted))
    taken = {w.color for w in wanted if w.color}
    moving = [m for m in MOTIONS if m != "still"]
    for obj, want in zip(scene.objects, wanted):
        for key in OBJECT_KEYS:
            if getattr(want, key) is not None:
                setattr(obj, key, getattr(want, key))
        if want.size is None:  # a named object is the video's subject: drawn large, to be seen
            obj.size = "large"
        if want.speed is not None and want.motion is None and obj.motion == "still":
            obj.motion = str(rng.choice(moving))  # a stated speed needs a motion to show it
        if want.color is None:
            # Keep colours distinct so every object stays nameable, when there are enough.
            free = [c for c in COLORS if c not in taken] or list(COLORS)
            obj.color = str(rng.choice(free))
            taken.add(obj.color)
    return scene


def expand(
    prompt: str,
    seed: int = 0,
    expander: str = "rule",
    url: str | None = None,
    model: str | None = None,
    timeout: float = 20.0,
) -> str:
    """Returns a detailed training-style caption for `prompt`; deterministic per seed for
    the rule-based expander. `expander="openai"` asks a chat endpoint first."""
    if expander == "openai":
        try:
            return openai_expand(prompt, seed, url=url, model=model, timeout=timeout)
        except ExpanderError as e:
            warnings.warn(f"prompt expander failed ({e}); using the rule-based one", stacklevel=2)
    elif expander != "rule":
        raise ValueError(f"expander must be 'rule' or 'openai', got {expander!r}")
    rng = np.random.default_rng(seed)
    return caption(expand_scene(prompt, rng), "detailed", rng)


class ExpanderError(RuntimeError):
    """The chat endpoint gave no usable caption (network, HTTP, format or content)."""


def system_prompt() -> str:
    """Returns the instructions for the chat model, with example training captions."""
    examples = [
        caption(sample_scene(np.random.default_rng(s), num_objects=1 + s % 3), "detailed", s)
        for s in range(3)
    ]
    return (
        "You rewrite a short prompt for a text-to-video model into one detailed caption in "
        "the style of its training captions. The world holds 1 to 3 shapes (circle, square or "
        "triangle), each red, orange, yellow, green, cyan, blue, purple or white, small or "
        "large, moving left, right, up, down, bouncing, or still, slowly or fast; an "
        "environment (meadow, desert, snowfield, ocean or city); day or night; and a camera "
        "that is static, pans left or right, or zooms in or out. Keep everything the prompt "
        "states, fill in everything else (an object whose size is not stated is large), and "
        "describe every object fully. Reply with the "
        "caption only, in one paragraph.\nExamples:\n" + "\n".join(examples)
    )


def openai_expand(
    prompt: str,
    seed: int = 0,
    url: str | None = None,
    model: str | None = None,
    timeout: float = 20.0,
) -> str:
    """Returns the caption an OpenAI-compatible endpoint writes for `prompt`; raises
    ExpanderError when the call fails or the reply drops an attribute the prompt states."""
    url = url or os.environ.get("KINETOSCOPE_EXPANDER_URL") or DEFAULT_URL
    model = model or os.environ.get("KINETOSCOPE_EXPANDER_MODEL") or DEFAULT_MODEL
    body = {
        "model": model,
        "messages": [
            {"role": "system", "content": system_prompt()},
            {"role": "user", "content": prompt},
        ],
        "temperature": 0.7,
        "max_tokens": 200,
        "seed": seed,
    }
    headers = {"Content-Type": "application/json"}
    key = next((os.environ[k] for k in KEY_ENV if os.environ.get(k)), None)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(
        url.rstrip("/") + "/chat/completions", data=json.dumps(body).encode(), headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as e:
        raise ExpanderError(f"HTTP {e.code} from {request.full_url}") from e
    except (urllib.error.URLError, OSError) as e:  # refused, unreachable, timed out
        raise ExpanderError(f"{request.full_url}: {getattr(e, 'reason', e)}") from e
    try:
        text = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise ExpanderError(f"reply is not a chat completion: {raw[:80]!r}") from e
    if not isinstance(text, str) or not text.strip():
        raise ExpanderError("reply has no caption")
    text = " ".join(text.split()).strip("\"'")
    wanted = parse_prompt(prompt).scene
    if not satisfies(parse_prompt(text).scene, wanted):
        raise ExpanderError(f"reply drops something the prompt states: {text[:120]!r}")
    return text
