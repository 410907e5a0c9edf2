"""`kinetoscope eval` and `kinetoscope bench` on a tiny random model saved to a folder.

The weights are random, so no figure here says anything about quality: what is tested is what
a user of the commands relies on: every attribute reported with its count, JSON that parses,
reproducible runs, the --no-expand switch, finite reconstruction figures, the time split, and
one-line errors (exit 2) on bad input before any model is loaded.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from test_pipeline import tiny_pipeline  # tests/ is on sys.path under pytest

from kinetoscope.bench import bench_generate, timed_stages
from kinetoscope.cli import main
from kinetoscope.evaluate import ATTRIBUTES, eval_adherence, eval_vae, reconstruct
from kinetoscope.pipeline import Pipeline
from kinetoscope.prompts.caption import load_prompts
from kinetoscope.world.judge import score_scene
from kinetoscope.world.scene import Scene

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(tiny_pipeline().save_pretrained(tmp_path_factory.mktemp("model") / "tiny"))


@pytest.fixture(scope="module")
def pipe(model_dir):
    return Pipeline.from_pretrained(model_dir, device="cpu", dtype=torch.float32)


def _json_after_table(out: str) -> dict:
    return json.loads(out[out.index("\n{") + 1 :])


def test_eval_adherence_cli_reports_every_attribute_as_table_and_json(model_dir, capsys):
    assert main(["eval", "adherence", "--model", model_dir, "--count", "2"]) == 0
    out = capsys.readouterr().out
    result = _json_after_table(out)
    assert result["count"] == 2 and result["expand"] is True and result["prompts"] == "heldout"
    assert set(result["attributes"]) == set(ATTRIBUTES)
    for key, r in result["attributes"].items():
        # held-out prompts state every attribute but the count (only some say how many)
        assert r["n"] == 2 or key == "count"
        assert r["n"] == 0 or 0.0 <= r["accuracy"] <= 1.0
    assert 0.0 <= result["overall"] <= 1.0
    assert "per_prompt" not in result  # the summary; per-prompt scores go to --json
    table = out[: out.index("\n{")]
    for label in ("color", "shape", "motion", "camera", "environment", "day/night", "overall"):
        assert label in table


def test_eval_adherence_is_deterministic_and_expansion_switches(pipe, tmp_path, model_dir):
    prompts = load_prompts("short")[:2]
    a = eval_adherence(pipe, prompts, expand=False, seed=3, progress=False)
    b = eval_adherence(pipe, prompts, expand=False, seed=3, progress=False)
    assert [p["scores"] for p in a["per_prompt"]] == [p["scores"] for p in b["per_prompt"]]
    assert [p["seed"] for p in a["per_prompt"]] == [3, 4]  # prompt i gets seed + i
    # without expansion the model sees the prompt as written; scored against it either way
    assert all(p["expanded_prompt"] == p["prompt"] for p in a["per_prompt"])
    c = eval_adherence(pipe, prompts, expand=True, seed=3, progress=False)
    assert all(p["expanded_prompt"] != p["prompt"] for p in c["per_prompt"])
    # per-attribute accuracy is the mean over the prompts that state it
    for key, r in a["attributes"].items():
        vals = [p["scores"][key] for p in a["per_prompt"] if key in p["scores"]]
        assert r["n"] == len(vals)
        assert r["accuracy"] == (pytest.approx(np.mean(vals)) if vals else None)

    out = tmp_path / "adh.json"
    f = tmp_path / "mine.txt"
    f.write_text("\n".join(prompts) + "\n\n")
    args = ["eval", "adherence", "--model", model_dir, "--prompts", str(f), "--no-expand",
            "--seed", "3", "--json", str(out)]  # fmt: skip
    assert main(args) == 0
    full = json.loads(out.read_text())
    assert full["expand"] is False and full["attributes"] == a["attributes"]
    assert [p["scores"] for p in full["per_prompt"]] == [p["scores"] for p in a["per_prompt"]]
    # each record keeps what the judge saw, and that scene is what was scored
    for p in full["per_prompt"]:
        assert score_scene(Scene.from_dict(p["seen"]), p["prompt"]) == p["scores"]


def test_eval_vae_gives_finite_psnr_and_ssim(pipe, model_dir, capsys):
    r = eval_vae(pipe.vae, count=2, seed=0, width=32, height=32, frames=9, dtype=torch.float32,
                 progress=False)  # fmt: skip
    assert math.isfinite(r["psnr"]) and r["psnr"] > 0 and r["psnr_min"] <= r["psnr"]
    assert -1.0 <= r["ssim"] <= 1.0
    assert r == {**eval_vae(pipe.vae, 2, 0, 32, 32, 9, dtype=torch.float32, progress=False),
                 "wall_seconds": r["wall_seconds"]}  # fmt: skip
    # the round trip keeps the shape: 1 + 4k frames in, as many out
    frames = np.zeros((9, 32, 32, 3), np.uint8)
    assert reconstruct(pipe.vae, frames, torch.float32).shape == frames.shape

    assert main(["eval", "vae", "--model", model_dir, "--count", "1"]) == 0
    out = capsys.readouterr().out
    result = _json_after_table(out)
    assert result["count"] == 1 and result["frames"] == 33 and result["size"] == [32, 32]
    assert math.isfinite(result["psnr"]) and "PSNR (dB)" in out


def test_bench_generate_splits_the_time_into_the_pipeline_stages(pipe, model_dir, capsys):
    r = bench_generate(pipe, repeat=1)
    med = r["median"]
    assert med["text"] > 0 and med["sampling"] > 0 and med["decoding"] > 0
    assert med["text"] + med["sampling"] + med["decoding"] <= med["total"]
    assert r["machine"]["torch_threads"] == torch.get_num_threads()
    # the stages are wrapped only while timing: the pipeline is its plain self afterwards
    assert "sample_latents" not in vars(pipe)
    t: dict = {}
    with timed_stages(pipe, t):
        pipe.generate("a ball", frames=13, seed=0, progress=False)  # 2 windows of 3 latents
    assert t["vae encode"] > 0 and set(t) == {"text", "sampling", "decoding", "vae encode"}

    assert main(["bench", "generate", "--model", model_dir, "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    for part in ("text", "sampling", "decoding", "total", "torch threads", "cpu capability"):
        assert part in out


@pytest.mark.parametrize("keyframe", [False, True])
@pytest.mark.parametrize("frames", [9, 13, 29])
def test_bench_generate_records_the_windows_it_sampled(pipe, frames, keyframe, monkeypatch):
    monkeypatch.setattr(pipe, "defaults", replace(pipe.defaults, keyframe=keyframe))
    calls = []
    sample = pipe.sample_latents
    record = lambda *a, **kw: calls.append(kw) or sample(*a, **kw)  # noqa: E731
    monkeypatch.setattr(pipe, "sample_latents", record)
    r = bench_generate(pipe, frames=frames, repeat=1)
    windows = [kw for kw in calls if "guide_frames" in kw]  # roll's windows; not the keyframe
    assert r["video"]["windows"] == len(windows) // 2  # warm-up and one timed run
    assert r["video"]["guide_frames"] == pipe.defaults.guide_frames
    assert r["video"]["keyframe"] == keyframe


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "adherence", "--prompts", "/nonexistent/prompts.txt"], "cannot read prompts"),
        (["eval", "adherence", "--count", "0"], "--count must be at least 1"),
        (["eval", "vae", "--count", "0"], "--count must be at least 1"),
        (["eval", "adherence", "--count", "9999"], "more than the 240 prompts"),
        (["bench", "generate", "--repeat", "0"], "--repeat must be at least 1"),
        (["eval", "adherence", "--json", "/nonexistent/dir/out.json"], "does not exist"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, message, capsys):
    # input is checked before the model loads: a missing model is never reached
    assert main([*argv, "--model", "/nonexistent/model"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
