"""`kinetoscope world sample`, `caption`, `judge` and `expand` as a user runs them."""

from __future__ import annotations

import json

import pytest

from kinetoscope.cli import main
from kinetoscope.world.captions import parse_prompt, satisfies
from kinetoscope.world.scene import HELDOUT, Scene, is_excluded


def test_expand_prints_a_detailed_caption_keeping_the_prompt(capsys):
    assert main(["expand", "two red balls at night", "--seed", "5"]) == 0
    out = capsys.readouterr().out.strip()
    assert satisfies(parse_prompt(out).scene, parse_prompt("two red balls at night").scene)
    assert main(["expand", "two red balls at night", "--seed", "5"]) == 0
    assert capsys.readouterr().out.strip() == out


def test_expand_with_a_dead_endpoint_still_prints_a_caption(capsys):
    args = ["expand", "a cyan ball", "--expander", "openai"]
    args += ["--expander-url", "http://127.0.0.1:9", "--expander-timeout", "0.5"]
    with pytest.warns(UserWarning, match="rule-based"):
        assert main(args) == 0
    out = capsys.readouterr().out
    assert parse_prompt(out).scene.objects[0].color == "cyan"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    pytest.importorskip("kinetoscope.world.render")
    out = tmp_path_factory.mktemp("world")
    args = ["world", "sample", "--count", "3", "--size", "32x24", "--frames", "4", "--fps", "8"]
    assert main([*args, "--seed", "1", "--out", str(out)]) == 0
    return out


def test_world_sample_writes_clips_and_a_caption_manifest(clips):
    from kinetoscope.video import Video

    lines = [json.loads(line) for line in (clips / "captions.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    for line in lines:
        video = Video.read(clips / line["path"])  # relative to the folder
        assert (video.num_frames, video.width, video.height) == (4, 32, 24)
        scene = Scene.from_dict(line["scene"])
        assert not is_excluded(scene, HELDOUT)
        assert satisfies(scene, parse_prompt(line["detailed"]).scene)
        assert satisfies(scene, parse_prompt(line["short"]).scene)


def test_world_sample_heldout_draws_only_heldout_scenes(tmp_path):
    pytest.importorskip("kinetoscope.world.render")
    args = ["world", "sample", "--count", "4", "--size", "16x16", "--frames", "2"]
    assert main([*args, "--heldout", "--out", str(tmp_path)]) == 0
    for line in (tmp_path / "captions.jsonl").read_text().splitlines():
        assert is_excluded(Scene.from_dict(json.loads(line)["scene"]), HELDOUT)


def test_caption_writes_one_json_line_per_video(clips, tmp_path, capsys):
    pytest.importorskip("kinetoscope.world.judge")
    paths = [str(clips / "000000.mp4"), str(clips / "000001.mp4")]
    assert main(["caption", *paths, "--out", str(tmp_path / "c.jsonl")]) == 0
    lines = [json.loads(s) for s in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert [line["path"] for line in lines] == paths
    for line in lines:
        parsed = parse_prompt(line["caption"])
        assert parsed.unknown_words == [] and parsed.count >= 1
    capsys.readouterr()
    assert main(["caption", paths[0]]) == 0
    assert json.loads(capsys.readouterr().out)["caption"] == lines[0]["caption"]


def test_judge_prints_scores_as_json(clips, capsys):
    pytest.importorskip("kinetoscope.world.judge")
    first = json.loads((clips / "captions.jsonl").read_text().splitlines()[0])
    assert main(["judge", str(clips / first["path"]), first["detailed"]]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0.0 <= result["overall"] <= 1.0
    assert {"environment", "time", "camera", "shape", "color"} <= result.keys()


@pytest.mark.parametrize(
    "args",
    [
        ["judge", "missing.mp4", "a red ball"],
        ["caption", "missing.mp4"],
        ["world", "sample", "--count", "1", "--size", "4x4", "--frames", "2", "--out", "{tmp}"],
        ["world", "sample", "--count", "0", "--out", "{tmp}"],
        ["world", "sample", "--count", "1"],
    ],
)
def test_bad_input_exits_2_with_one_line(args, tmp_path, capsys):
    pytest.importorskip("kinetoscope.world.render")
    assert main([a.replace("{tmp}", str(tmp_path / "w")) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"kinetoscope {args[0]}: error:")


def test_bad_size_is_a_usage_error():
    with pytest.raises(SystemExit) as e:
        main(["world", "sample", "--size", "64by64", "--out", "x"])
    assert e.value.code == 2
