"""What the judge saw against what the prompt asked, from an `eval adherence --json` file.

    kinetoscope eval adherence --prompts benchmarks/probe_world.txt --no-expand --json a.json
    python benchmarks/confusion.py a.json [--keys shape,motion]

An accuracy says how often an attribute was right; this says what was drawn instead. Over the
prompts that state exactly one object, each key's table counts (stated value, value seen on
the object of the stated colour, "(none)" when the judge found no object of that colour). It
also counts how many objects the judge saw in each video, and, in videos with more than one,
the colours of those no prompt object has: stray objects of the background's colour, say green
in a meadow, are painted background, not a second shape.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

from kinetoscope.world.captions import parse_prompt
from kinetoscope.world.scene import OBJECT_KEYS

NONE = "(none)"


def confusions(per_prompt: list[dict], key: str) -> Counter:
    """Returns Counter{(stated, seen): videos} of `key` over the one-object prompts."""
    out: Counter = Counter()
    for p in per_prompt:
        stated = parse_prompt(p["prompt"]).scene.objects
        if len(stated) != 1 or getattr(stated[0], key) is None:
            continue
        o = stated[0]
        same = [s for s in p["seen"]["objects"] if s["color"] == o.color]
        out[(getattr(o, key), same[0][key] if same else NONE)] += 1
    return out


def extras(per_prompt: list[dict]) -> tuple[Counter, Counter]:
    """Returns (Counter{objects seen: videos}, Counter{colour: objects of a colour the prompt
    does not name, in videos with more than one object})."""
    seen = Counter(len(p["seen"]["objects"]) for p in per_prompt)
    colours: Counter = Counter()
    for p in per_prompt:
        objects = p["seen"]["objects"]
        stated = {o.color for o in parse_prompt(p["prompt"]).scene.objects}
        if len(objects) > 1:
            colours.update(o["color"] for o in objects if o["color"] not in stated)
    return seen, colours


def table(counts: Counter, key: str) -> str:
    """Returns a markdown table: a row per stated value, a column per value seen."""
    rows = sorted({a for a, _ in counts})
    seen = {b for _, b in counts}
    cols = sorted(seen - {NONE}) + [NONE] * (NONE in seen)
    lines = [f"| {key}: stated \\ seen | " + " | ".join(cols) + " | right |"]
    lines.append("|---" * (len(cols) + 2) + "|")
    for r in rows:
        cells = " | ".join(str(counts[(r, c)]) for c in cols)
        lines.append(f"| {r} | {cells} | {counts[(r, r)]}/{sum(counts[(r, c)] for c in cols)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json", help="a file written by `kinetoscope eval adherence --json`")
    ap.add_argument("--keys", default="shape,motion", help="object attributes, comma-separated")
    args = ap.parse_args()
    keys = [k.strip() for k in args.keys.split(",") if k.strip()]
    bad = [k for k in keys if k not in OBJECT_KEYS]
    if bad:
        ap.error(f"--keys: {', '.join(bad)} not among {', '.join(OBJECT_KEYS)}")
    try:
        with open(args.json) as f:
            per_prompt = json.load(f)["per_prompt"]
    except (OSError, ValueError, KeyError) as e:
        ap.error(f"{args.json}: not an `eval adherence --json` file ({e})")
    if per_prompt and "seen" not in per_prompt[0]:
        ap.error(f"{args.json}: written before --json kept the judged scenes; evaluate again")
    for key in keys:
        print(table(confusions(per_prompt, key), key) + "\n")
    seen, colours = extras(per_prompt)
    print("objects seen per video: " + ", ".join(f"{n}: {v}" for n, v in sorted(seen.items())))
    print("colours of objects no prompt asked for: "
          + (", ".join(f"{c} {v}" for c, v in colours.most_common()) or "none"))  # fmt: skip


if __name__ == "__main__":
    main()
