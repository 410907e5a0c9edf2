"""benchmarks/confusion.py: counts what the judge saw for what the prompt asked, over the
one-object prompts, and the stray objects of colours no prompt named."""

from __future__ import annotations

from benchmark_scripts import load

from kinetoscope.world.scene import Obj, Scene

cf = load("confusion")


def _record(prompt: str, *objects: Obj) -> dict:
    return {"prompt": prompt, "seen": Scene(objects=list(objects)).to_dict()}


def test_counts_stated_against_seen_and_the_stray_colours():
    records = [
        _record(
            "a red circle moving left", Obj("square", "red", motion="left"), Obj("circle", "green")
        ),
        _record("a red square moving right", Obj("square", "red", motion="left")),
        _record("a blue triangle", Obj("triangle", "yellow")),  # no blue object: (none)
        _record("a red circle and a blue square", Obj("circle", "red")),  # two objects: skipped
    ]
    assert cf.confusions(records, "shape") == {
        ("circle", "square"): 1, ("square", "square"): 1, ("triangle", cf.NONE): 1}  # fmt: skip
    assert cf.confusions(records, "motion") == {("left", "left"): 1, ("right", "left"): 1}
    seen, colours = cf.extras(records)
    assert seen == {2: 1, 1: 3}
    assert colours == {"green": 1}  # the yellow one is alone: a wrong colour, not a stray
    table = cf.table(cf.confusions(records, "shape"), "shape")
    assert table.splitlines()[0] == "| shape: stated \\ seen | square | (none) | right |"
    assert "| square | 1 | 0 | 1/1 |" in table and "| triangle | 0 | 1 | 0/1 |" in table
