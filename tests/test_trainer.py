"""The training loop: schedule, outputs of a run, refusing to clobber a run, bad config and a
full disk, on a micro VAE that steps in well under a second."""

from __future__ import annotations

import errno
import json
import math

import pytest
import torch

from kinetoscope.cli import main
from kinetoscope.diffusion import flow
from kinetoscope.diffusion.flow import velocity_error
from kinetoscope.models import vae as V
from kinetoscope.train import checkpoint as C
from kinetoscope.train.config import resolve
from kinetoscope.train.trainer import lr_at, read_metrics, train

MICRO = [
    "model.stage=vae", "model.vae=micro", "data.buckets=[[1,16,16]]", "data.image_share=1.0",
    "data.tokens_per_batch=2", "data.max_batch_size=2", "data.num_workers=0",
    "train.sample_every=1000", "optim.warmup=1",
]  # fmt: skip


@pytest.fixture(autouse=True)
def micro_vae(monkeypatch):
    monkeypatch.setitem(V.PRESETS, "micro", V.VAEConfig(dim=8, dim_mult=(1, 1, 1, 1), z_dim=4))


def cfg_for(tmp_path, *extra):
    return resolve({}, [*MICRO, f"train.out={tmp_path / 'run'}", *extra])


def test_lr_warms_up_linearly_then_decays_by_cosine_to_min_lr():
    cfg = resolve({}, ["optim.lr=1e-3", "optim.min_lr=1e-4", "optim.warmup=10", "train.steps=110"])
    assert lr_at(cfg, 0) == pytest.approx(1e-4)
    assert lr_at(cfg, 9) == pytest.approx(1e-3)
    assert lr_at(cfg, 60) == pytest.approx(0.55e-3)  # half way through the cosine
    assert lr_at(cfg, 110) == pytest.approx(1e-4)
    lrs = [lr_at(cfg, s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_run_writes_metrics_checkpoints_and_samples(tmp_path):
    cfg = cfg_for(tmp_path, "train.steps=3", "train.ckpt_every=2", "train.sample_every=3",
                  "train.kl_weight=0.01")  # fmt: skip
    run = train(cfg)
    recs = read_metrics(run)
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and r["lr"] > 0 for r in recs)
    for r in recs:  # the VAE's terms, before their weights: l1 + mse_weight x mse + kl_weight x kl
        t = cfg.train
        want = r["loss_l1"] + t.mse_weight * r["loss_mse"] + t.kl_weight * r["loss_kl"]
        assert r["loss"] == pytest.approx(want, rel=1e-5)
    assert [s for s, _ in C.list_checkpoints(run)] == [2, 3]
    tensors, state = C.load_checkpoint(run)
    assert set(tensors) == {"model", "ema"} and state["step"] == 3
    assert state["data_position"] == 3 and "optimizer" in state and "rng" in state
    assert (run / "step_000003" / "config.yaml").exists()
    assert list((run / "samples_000003").glob("recon_*.gif"))
    # The latent normalisation is measured and stored with the weights the dit stage loads.
    vae = V.VAE.from_preset("micro")
    vae.load_state_dict(tensors["ema"], strict=False)
    z = vae.encode(torch.rand(8, 3, 1, 16, 16) * 2 - 1)  # [B, C, 1, 2, 2]
    assert not torch.equal(vae.latents_std, torch.ones_like(vae.latents_std))
    assert 0.2 < z.std().item() < 5.0


def test_train_overrides_may_follow_resume(tmp_path, capsys):
    rc = main(["train", "/dev/null", "--resume", *MICRO, f"train.out={tmp_path}", "train.steps=0"])
    assert rc == 2 and "train.steps" in capsys.readouterr().err  # the override was read


def test_refuses_to_overwrite_a_run_without_resume(tmp_path, capsys):
    train(cfg_for(tmp_path, "train.steps=1"))
    rc = main(["train", "/dev/null", *MICRO, f"train.out={tmp_path / 'run'}", "train.steps=2"])
    assert rc == 2
    assert "--resume" in capsys.readouterr().err


def test_bad_config_key_fails_in_one_line_naming_it(tmp_path, capsys):
    rc = main(["train", "/dev/null", f"train.out={tmp_path / 'run'}", "optim.lrr=1e-3"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "optim.lrr" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()  # failed before any work
    rc = main(["train", "/dev/null", "optim.grad_accum=0"])
    assert rc == 2 and "optim.grad_accum" in capsys.readouterr().err
    rc = main(["train", "/dev/null", "data.simple_share=1.5"])
    assert rc == 2 and "data.simple_share" in capsys.readouterr().err


def test_full_disk_keeps_previous_checkpoint_and_stops(tmp_path, monkeypatch):
    cfg = cfg_for(tmp_path, "train.steps=4", "train.ckpt_every=2")
    real = C.save_tensors
    calls = []

    def save_tensors(tensors, path, metadata=None):
        calls.append(path)
        if "step_000004" in str(path):  # the second checkpoint hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(C, "save_tensors", save_tensors)
    with pytest.raises(C.UserError, match="no space left.*step_000002 is intact.*stopped"):
        train(cfg)
    assert [s for s, _ in C.list_checkpoints(tmp_path / "run")] == [2]
    tensors, state = C.load_checkpoint(tmp_path / "run")
    assert state["step"] == 2 and tensors["model"]


def test_a_vae_fine_tunes_its_decoder_and_keeps_its_latents(tmp_path, capsys):
    """model.freeze_encoder: the decoder learns, the encoder and the latent normalisation stay
    bit for bit, so a DiT trained on the old latents still fits the new VAE."""
    first = ["train.steps=2", "train.sample_every=2", f"train.out={tmp_path / 'a'}"]
    assert main(["train", "/dev/null", *MICRO, *first]) == 0
    more = ["train.steps=2", "train.sample_every=2", "optim.lr=1e-2", "model.freeze_encoder=true",
            f"model.init_from={tmp_path / 'a'}", f"train.out={tmp_path / 'b'}"]  # fmt: skip
    assert main(["train", "/dev/null", *MICRO, *more]) == 0
    a, b = (C.load_checkpoint(tmp_path / r)[0] for r in "ab")
    start = {**a["model"], **a["ema"]}
    assert not any(k.startswith(("encoder.", "quant_conv.")) for k in b["ema"])
    for group in b.values():  # what vae_weights reads: the EMA over the raw weights
        for k in ("latents_mean", "latents_std"):
            assert torch.equal(group[k], start[k])
    for k, v in b["model"].items():
        if k.startswith(("encoder.", "quant_conv.")):
            assert torch.equal(v, start[k]), k
    assert not torch.equal(b["model"]["decoder.conv_out.weight"], start["decoder.conv_out.weight"])
    assert list((tmp_path / "b" / "samples_000002").glob("recon_*.gif"))

    capsys.readouterr()
    alone = ["model.freeze_encoder=true", f"train.out={tmp_path / 'c'}"]
    assert main(["train", "/dev/null", *MICRO, *alone]) == 2  # nothing to keep: refused
    assert "set model.init_from" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_a_vae_grows_a_wider_decoder_from_a_narrow_run(tmp_path, monkeypatch, capsys):
    """model.init_from with a recipe whose decoder is wider (VAEConfig.dec_dim_mult): the run
    starts from the narrow VAE widened (widen_decoder), its encoder kept bit for bit."""
    wide = V.VAEConfig(dim=8, dim_mult=(1, 1, 1, 1), dec_dim_mult=(2, 1, 1, 1), z_dim=4)
    monkeypatch.setitem(V.PRESETS, "micro-wide", wide)
    assert main(["train", "/dev/null", *MICRO, "train.steps=1", f"train.out={tmp_path / 'a'}"]) == 0
    more = ["model.vae=micro-wide", "model.freeze_encoder=true", "train.steps=1",
            f"model.init_from={tmp_path / 'a'}", f"train.out={tmp_path / 'b'}"]  # fmt: skip
    capsys.readouterr()
    assert main(["train", "/dev/null", *MICRO, *more]) == 0
    assert "widened to the recipe's 16" in capsys.readouterr().out
    a, b = (C.load_checkpoint(tmp_path / r)[0] for r in "ab")
    start = {**a["model"], **a["ema"]}
    assert b["model"]["decoder.conv_out.weight"].shape[1] == 16
    for k, v in b["model"].items():
        if k.startswith(("encoder.", "quant_conv.")):
            assert torch.equal(v, start[k]), k

    back = ["model.freeze_encoder=true", "train.steps=1", f"model.init_from={tmp_path / 'b'}",
            f"train.out={tmp_path / 'c'}"]  # fmt: skip
    assert main(["train", "/dev/null", *MICRO, *back]) == 2  # a wide decoder does not shrink
    assert "do not fit this recipe's model.vae=micro" in capsys.readouterr().err


def test_grad_accum_consumes_one_batch_per_micro_step(tmp_path):
    run = train(cfg_for(tmp_path, "train.steps=2", "optim.grad_accum=2", "train.ckpt_every=2"))
    assert [r["position"] for r in read_metrics(run)] == [2, 4]
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1


def test_dit_trains_from_a_latent_cache_it_built(tmp_path, monkeypatch):
    from kinetoscope.data.latent_cache import LatentCache
    from kinetoscope.models import dit as DT
    from kinetoscope.models import text as TX

    micro_dit = DT.DiTConfig(dim=32, ffn_dim=64, num_layers=1, num_heads=2, text_dim=32)
    monkeypatch.setitem(DT.PRESETS, "micro", micro_dit)
    monkeypatch.setitem(TX.BYTE_PRESETS, "micro", TX.ByteTextConfig(32, 1, 2, 64))
    cache = tmp_path / "cache"
    common = [
        "model.stage=dit", "model.vae=micro", "model.dit=micro", "model.text=micro",
        "data.buckets=[[5,16,16],[1,16,16]]", "data.image_share=0.5", "data.num_workers=0",
        "data.tokens_per_batch=8", "data.max_batch_size=4", f"data.latent_cache={cache}",
        "train.sample_every=1000", "optim.warmup=1",
    ]  # fmt: skip
    assert main(["cache", "/dev/null", *common, "--samples", "6"]) == 0
    lc = LatentCache(cache)
    assert len(lc) == 6 and set(lc.shapes()) <= {(4, 2, 2, 2), (4, 1, 2, 2)}
    assert all(s["caption"] for s in lc.samples)  # captions kept: the text encoder trains
    run = tmp_path / "run"
    assert main(["train", "/dev/null", *common, f"train.out={run}", "train.steps=2"]) == 0
    assert [r["step"] for r in read_metrics(run)] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in read_metrics(run))
    assert main(["cache", "/dev/null", *common[:-3], "--samples", "6"]) == 2  # no cache folder


def test_ema_warms_up_so_short_runs_forget_their_initial_weights():
    from torch import nn

    from kinetoscope.train.ema import EMA

    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.999)
    assert ema.decay_at(1) == pytest.approx(2 / 11) and ema.decay_at(10**6) == 0.999
    with torch.no_grad():
        model.weight.fill_(1.0)
    for step in range(1, 1501):  # the weights jump once, then hold: the EMA must follow
        ema.update(model, step)
    assert torch.allclose(ema.state_dict()["weight"], torch.ones(2, 2), atol=1e-3)


def test_trains_on_a_manifest_of_real_files_skipping_broken_ones(tmp_path, capsys):
    from kinetoscope.prompts.caption import write_world_samples

    clips = tmp_path / "clips"
    write_world_samples(clips, 4, 16, 16, 9, 8.0, seed=0, heldout=False, progress=None)
    (clips / "000003.mp4").write_bytes(b"not a video")  # one broken file in the manifest
    run = tmp_path / "run"
    source = [
        "data.source=manifest", f"data.path={clips / 'captions.jsonl'}",
        "data.buckets=[[5,16,16]]", "data.image_share=0", "data.tokens_per_batch=2",
    ]  # fmt: skip
    rc = main(["train", "/dev/null", *MICRO, *source, f"train.out={run}", "train.steps=3"])
    assert rc == 0 and [r["step"] for r in read_metrics(run)] == [1, 2, 3]
    assert "1 clips skipped" in capsys.readouterr().out  # counted and reported, not raised


def test_a_batch_of_only_unreadable_clips_is_passed_over_and_counted_in_the_position():
    from kinetoscope.train.trainer import _readable

    bad = ("a.mp4", "moov atom not found")
    stream = [{"video": 1, "skipped": []}, {"video": None, "skipped": [bad]},
              {"video": None, "skipped": [bad]}, {"video": 2, "skipped": [bad]}]  # fmt: skip
    skipped = []
    got = [(read, b["video"]) for read, b in _readable(iter(stream), skipped)]
    # Batch 2 is trained on after 3 batches read: the position saved after it is 4, not 2.
    assert got == [(1, 1), (3, 2)] and skipped == [bad] * 3


def test_stop_at_ends_a_phase_with_a_checkpoint_and_resume_finishes_the_schedule(tmp_path):
    cfg = cfg_for(tmp_path, "train.steps=4", "train.ckpt_every=1000", "train.stop_at=2")
    run = train(cfg)
    assert [s for s, _ in C.list_checkpoints(run)] == [2]
    assert [r["lr"] for r in read_metrics(run)] == [lr_at(cfg, 0), lr_at(cfg, 1)]
    train(cfg_for(tmp_path, "train.steps=4", "train.ckpt_every=1000"), resume=True)
    recs = read_metrics(run)
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert recs[2]["lr"] == pytest.approx(lr_at(cfg, 2))  # the schedule ran on to steps=4
    with pytest.raises(C.UserError, match="train.stop_at"):
        cfg_for(tmp_path, "train.steps=4", "train.stop_at=5")


def test_eval_vae_measures_a_vae_run_on_its_own(tmp_path, capsys):
    run = train(cfg_for(tmp_path, "train.steps=1"))
    assert main(["eval", "vae", "--model", str(run), "--count", "1"]) == 0
    out = capsys.readouterr().out
    assert "PSNR (dB)" in out and '"model": "run@step_000001"' in out


@pytest.fixture
def micro_dit(monkeypatch):
    from kinetoscope.models import dit as DT
    from kinetoscope.models import text as TX

    monkeypatch.setitem(TX.BYTE_PRESETS, "micro", TX.ByteTextConfig(32, 1, 2, 64))
    monkeypatch.setitem(DT.PRESETS, "micro", DT.DiTConfig(dim=32, ffn_dim=64, num_layers=1,
                                                          num_heads=2, text_dim=32))  # fmt: skip
    monkeypatch.setitem(
        DT.PRESETS, "micro-fine", DT.replace(DT.PRESETS["micro"], patch_size=(1, 1, 1))
    )
    monkeypatch.setitem(DT.PRESETS, "micro-pool", DT.replace(DT.PRESETS["micro"], text_pool=True))
    monkeypatch.setitem(DT.PRESETS, "micro-deep", DT.replace(DT.PRESETS["micro"], num_layers=2))


def test_text_stage_learns_to_read_captions_and_the_dit_starts_from_it(tmp_path, capsys, micro_dit):
    from kinetoscope.train.trainer import load_text_run

    text_run = tmp_path / "text"
    args = ["model.stage=text", "model.text=micro", "data.max_batch_size=16", "optim.lr=3e-3",
            "optim.warmup=5", "train.steps=80", "train.ckpt_every=80", "train.sample_every=80",
            f"train.out={text_run}"]  # fmt: skip
    assert main(["train", "/dev/null", *args]) == 0
    losses = [r["loss"] for r in read_metrics(text_run)]
    assert sum(losses[-10:]) < 0.9 * sum(losses[:10])  # it learns to read
    acc = json.loads((text_run / "samples_000080" / "accuracy.json").read_text())
    assert set(acc) == {
        "colours",
        "shapes",
        "motions",
        "colour-shape",
        "colour-motion",
        "environment",
        "time",
        "camera",
    }  # on scenes it never saw
    assert acc["time"] > 0.8  # day or night, of scenes it never saw (chance: 0.5)

    dit_run = tmp_path / "dit"
    args = ["model.stage=dit", "model.vae=micro", "model.dit=micro", "model.text=micro",
            f"model.text_path={text_run}", "data.buckets=[[1,16,16]]", "data.image_share=1.0",
            "data.num_workers=0", "data.max_batch_size=2", "optim.lr=1e-12", "optim.min_lr=0",
            "optim.warmup=1", "train.steps=1", "train.ema_decay=0", "train.sample_every=1000",
            f"train.out={dit_run}"]  # fmt: skip
    assert main(["train", "/dev/null", *args]) == 0
    tensors, _ = C.load_checkpoint(dit_run)
    read = load_text_run(text_run)
    for k, v in read.items():
        torch.testing.assert_close(tensors["model"][f"text.{k}"], v, rtol=0, atol=1e-6)
    with pytest.raises(Exception, match="no text encoder"):
        load_text_run(dit_run)
    other = [*args[:-1], "model.text=tiny", f"train.out={tmp_path / 'other'}"]
    assert main(["train", "/dev/null", *other]) == 2  # another encoder: one line, no traceback
    assert "do not fit this recipe's model.text=tiny" in capsys.readouterr().err


def test_a_dit_run_fine_tunes_from_a_trained_model(tmp_path, capsys, micro_dit):
    """model.init_from: the new run starts from the model's weights (EMA over raw)."""
    base = ["model.stage=dit", "model.vae=micro", "model.dit=micro", "model.text=micro",
            "data.buckets=[[1,16,16]]", "data.image_share=1.0", "data.num_workers=0",
            "data.max_batch_size=2", "train.steps=1", "train.sample_every=1000"]  # fmt: skip
    assert main(["train", "/dev/null", *base, f"train.out={tmp_path / 'a'}"]) == 0
    still = ["optim.lr=1e-12", "optim.min_lr=0", "optim.warmup=1"]
    args = [*base, *still, f"model.init_from={tmp_path / 'a'}", f"train.out={tmp_path / 'b'}"]
    assert main(["train", "/dev/null", *args]) == 0
    a, b = C.load_checkpoint(tmp_path / "a")[0], C.load_checkpoint(tmp_path / "b")[0]["model"]
    start = {**a["model"], **a["ema"]}
    assert start.keys() == b.keys()
    for k, v in start.items():
        torch.testing.assert_close(b[k], v, rtol=0, atol=1e-6)
    assert not torch.equal(a["model"]["dit.head.head.weight"], a["ema"]["dit.head.head.weight"])

    capsys.readouterr()
    tiny = [*args[:-1], "model.dit=tiny", f"train.out={tmp_path / 'c'}"]
    assert main(["train", "/dev/null", *tiny]) == 2  # another architecture: one line, no run
    assert "do not fit this recipe's model.dit=tiny" in capsys.readouterr().err
    both = [*args[:-1], f"model.text_path={tmp_path / 'a'}", f"train.out={tmp_path / 'd'}"]
    assert main(["train", "/dev/null", *both]) == 2
    assert "unset model.text_path" in capsys.readouterr().err
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").glob("step_*"))


def _still_run_from_micro(tmp_path, capsys, dit: str) -> tuple[dict, dict, str]:
    """Trains a one-step `model.dit=micro` run (tmp_path/a), then a one-step run of `dit` from
    it (`model.init_from`, tmp_path/b) at a learning rate too small to move a weight. Returns
    the first run's weights (its EMA over its model), the second's model weights and what the
    second printed."""
    base = ["model.stage=dit", "model.vae=micro", "model.text=micro", "data.buckets=[[1,16,16]]",
            "data.image_share=1.0", "data.num_workers=0", "data.max_batch_size=2",
            "train.steps=1", "train.sample_every=1000"]  # fmt: skip
    assert (
        main(["train", "/dev/null", *base, "model.dit=micro", f"train.out={tmp_path / 'a'}"]) == 0
    )
    capsys.readouterr()
    still = ["optim.lr=1e-12", "optim.min_lr=0", "optim.warmup=1", f"model.dit={dit}"]
    args = [*base, *still, f"model.init_from={tmp_path / 'a'}", f"train.out={tmp_path / 'b'}"]
    assert main(["train", "/dev/null", *args]) == 0
    out = capsys.readouterr().out
    a = C.load_checkpoint(tmp_path / "a")[0]
    return {**a["model"], **a["ema"]}, C.load_checkpoint(tmp_path / "b")[0]["model"], out


def test_a_dit_run_fine_tunes_across_patch_sizes(tmp_path, capsys, micro_dit):
    """model.init_from with another patch size: the patch embedding and head are resized
    (`resize_patches`), said in one line, and every other weight starts as it was."""
    from kinetoscope.models.dit import resize_patches

    start, b, out = _still_run_from_micro(tmp_path, capsys, "micro-fine")
    assert "(1, 2, 2) patches; its patch embedding and head are resized to (1, 1, 1)" in out
    dit = {k[4:]: v for k, v in start.items() if k.startswith("dit.")}
    want = resize_patches(dit, (1, 1, 1))
    assert b["dit.patch_embedding.weight"].shape[2:] == (1, 1, 1)
    for k, v in want.items():
        torch.testing.assert_close(b[f"dit.{k}"], v, rtol=0, atol=1e-6)


def test_a_dit_run_deepens_a_shallower_model_and_refuses_to_cut_one(tmp_path, capsys, micro_dit):
    """model.init_from with fewer blocks: they are grown (`deepen`), said in one line, and the
    run starts from the old weights; from more blocks than the recipe's: a message, exit 2."""
    from kinetoscope.models.dit import deepen

    start, b, out = _still_run_from_micro(tmp_path, capsys, "micro-deep")
    assert "has 1 blocks; deepened to 2, the new ones starting as the identity" in out
    dit = {k[4:]: v for k, v in start.items() if k.startswith("dit.")}
    for k, v in deepen(dit, 2).items():
        torch.testing.assert_close(b[f"dit.{k}"], v, rtol=0, atol=1e-6)
    base = ["model.stage=dit", "model.vae=micro", "model.text=micro", "model.dit=micro",
            "data.buckets=[[1,16,16]]", "data.image_share=1.0", "data.num_workers=0",
            f"model.init_from={tmp_path / 'b'}", f"train.out={tmp_path / 'c'}"]  # fmt: skip
    assert main(["train", "/dev/null", *base]) == 2
    assert "has 2 blocks, more than this recipe's 1" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_a_dit_run_adds_the_pooled_text_path_to_a_model_without_one(tmp_path, capsys, micro_dit):
    """model.init_from without the pooled-text path: the path is added at zero (said in one
    line), so the new run starts from the old model's velocity, every old weight as it was."""
    start, b, out = _still_run_from_micro(tmp_path, capsys, "micro-pool")
    assert "has no pooled-text path; it starts at zero" in out
    assert {k for k in b if k not in start} == {
        "dit.text_pool.0.weight", "dit.text_pool.0.bias", "dit.text_pool.2.weight",
        "dit.text_pool.2.bias"}  # fmt: skip
    assert b["dit.text_pool.2.weight"].abs().max() < 1e-6  # still zero after a still step
    for k, v in start.items():
        torch.testing.assert_close(b[k], v, rtol=0, atol=1e-6)


def test_read_weight_adds_a_reading_loss_and_exports_without_its_head(tmp_path, capsys, micro_dit):
    """train.read_weight: the encoder also answers the text stage's reading loss during the dit
    stage; the head lives in the run's checkpoints only, not in what the run exports."""
    from kinetoscope.pretrained import dit_text_weights

    base = ["model.stage=dit", "model.vae=micro", "model.dit=micro", "model.text=micro",
            "data.buckets=[[1,16,16]]", "data.image_share=1.0", "data.num_workers=0",
            "data.max_batch_size=4", "train.text_dropout=0", "train.steps=1",
            "train.sample_every=1000"]  # fmt: skip
    for name, w in (("plain", 0.0), ("read", 1.0)):
        args = [*base, f"train.read_weight={w}", f"train.out={tmp_path / name}"]
        assert main(["train", "/dev/null", *args]) == 0
    plain, read = (read_metrics(tmp_path / n)[0] for n in ("plain", "read"))
    assert read["loss"] > plain["loss"] + 0.5  # same seed, clips and noise: the reading loss on top
    assert read["loss"] == pytest.approx(read["loss_flow"] + read["loss_read"], rel=1e-5)
    tensors = C.load_checkpoint(tmp_path / "read")[0]["model"]
    assert tensors["reader.weight"].shape[0] > 0
    dit, text = dit_text_weights(tmp_path / "read")
    assert not any("reader" in k for k in (*dit, *text))
    assert dit.keys() == dit_text_weights(tmp_path / "plain")[0].keys()

    cached = [*base, "train.read_weight=1", "data.latent_cache=somewhere"]
    assert main(["train", "/dev/null", *cached, f"train.out={tmp_path / 'c'}"]) == 2
    assert "set data.source=shapeworld and data.latent_cache=null" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_latent_coverage_pools_the_mask_as_the_causal_vae_groups_frames():
    from kinetoscope.train.objects import latent_coverage

    cover = torch.zeros(2, 9, 16, 16)
    cover[0, 0, :8, :8] = 1.0  # frame 0: its own latent frame, a quarter covered in (0, 0)
    cover[1, 6, 8:, 8:] = 1.0  # frame 6: one of the group of frames 5..8 (latent frame 2)
    got = latent_coverage(cover, (3, 2, 2))
    assert got.shape == (2, 1, 3, 2, 2)
    want = torch.zeros(2, 1, 3, 2, 2)
    want[0, 0, 0, 0, 0] = 1.0
    want[1, 0, 2, 1, 1] = 1.0  # the most over the group, not its mean
    torch.testing.assert_close(got, want)
    half = torch.zeros(1, 1, 16, 16)
    half[0, 0, :4] = 1.0
    assert latent_coverage(half, (1, 2, 2))[0, 0, 0].tolist() == [[0.5, 0.5], [0.0, 0.0]]
    with pytest.raises(ValueError, match="does not map onto latent"):
        latent_coverage(cover, (4, 2, 2))


def test_object_weight_weighs_the_objects_in_the_flow_loss(tmp_path, capsys, micro_dit):
    """train.object_weight: the same seed, clips and noise; only the loss's weights differ."""
    base = ["model.stage=dit", "model.vae=micro", "model.dit=micro", "model.text=micro",
            "data.buckets=[[5,16,16]]", "data.image_share=0.0", "data.num_workers=0",
            "data.max_batch_size=2", "train.steps=1", "train.sample_every=1000"]  # fmt: skip
    for name, w in (("plain", 0.0), ("objects", 20.0)):
        args = [*base, f"train.object_weight={w}", f"train.out={tmp_path / name}"]
        assert main(["train", "/dev/null", *args]) == 0
    plain, weighted = (read_metrics(tmp_path / n)[0]["loss"] for n in ("plain", "objects"))
    assert math.isfinite(weighted) and weighted != pytest.approx(plain, rel=1e-4)

    cached = [*base, "train.object_weight=1", "data.latent_cache=somewhere"]
    assert main(["train", "/dev/null", *cached, f"train.out={tmp_path / 'c'}"]) == 2
    err = capsys.readouterr().err
    assert "train.object_weight needs the object masks" in err and "latent_cache=null" in err
    assert not (tmp_path / "c").exists()


def test_pair_weight_adds_the_paired_clips_term(tmp_path, capsys, monkeypatch, micro_dit):
    """train.pair_weight: the same seed, clips, noise and flow loss; the term comes on top."""
    base = ["model.stage=dit", "model.vae=micro", "model.dit=micro", "model.text=micro",
            "data.buckets=[[5,16,16]]", "data.image_share=0.0", "data.num_workers=0",
            "data.max_batch_size=2", "data.simple_share=1.0", "train.text_dropout=0",
            "train.steps=1", "train.sample_every=1000", "train.bf16=false"]  # fmt: skip
    for name, w in (("plain", 0.0), ("pair", 100.0)):
        args = [*base, f"train.pair_weight={w}", f"train.out={tmp_path / name}"]
        assert main(["train", "/dev/null", *args]) == 0
    plain, paired = (read_metrics(tmp_path / n)[0] for n in ("plain", "pair"))
    assert math.isfinite(paired["loss"]) and paired["loss"] > plain["loss"] + 1e-3
    assert paired["loss_flow"] == pytest.approx(plain["loss"], rel=1e-5)
    want = paired["loss_flow"] + 100 * paired["loss_pair"]  # each term before its weight
    assert paired["loss"] == pytest.approx(want, rel=1e-5)

    seen = []  # the t each row goes through the model at: the pairs' moved into [0.9, 1]

    def spy(model, x0, t, *args):
        seen.append(t.tolist())
        return velocity_error(model, x0, t, *args)

    monkeypatch.setattr(flow, "velocity_error", spy)
    args = [*base, "train.pair_weight=1", "train.pair_t_min=0.9", f"train.out={tmp_path / 's'}"]
    assert main(["train", "/dev/null", *args]) == 0
    (ts,) = seen  # one batch: its clips, then each pair twice (once per caption)
    assert len(ts) == 6 and ts[2:4] == ts[4:6]
    assert ts[2:4] == pytest.approx([0.9 + 0.1 * t for t in ts[:2]])

    cached = [*base, "train.pair_weight=1", "data.latent_cache=somewhere"]
    assert main(["train", "/dev/null", *cached, f"train.out={tmp_path / 'c'}"]) == 2
    assert "train.pair_weight needs the scenes" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_shape_map_shares_each_token_between_background_and_the_shapes():
    from kinetoscope.train.objects import shape_map, shape_map_loss

    cover = torch.zeros(1, 3, 5, 16, 16)  # [B, S, T, H, W]: circles, squares, triangles
    cover[0, 1, 0, :8, :8] = 1.0  # frame 0: a square fills token (0, 0)
    cover[0, 2, 3, :4, 8:] = 1.0  # frame 3 (latent frame 1): a triangle, half of token (0, 1)
    cover[0, 0, 3, :4, 8:] = 1.0  # ... overlapped by a circle
    got = shape_map(cover, (2, 2, 2))
    assert got.shape == (1, 4, 2, 2, 2)  # background, circle, square, triangle
    torch.testing.assert_close(got.sum(1), torch.ones(1, 2, 2, 2))
    assert got[0, :, 0, 0, 0].tolist() == [0.0, 0.0, 1.0, 0.0]
    assert got[0, :, 1, 0, 1].tolist() == pytest.approx([0.0, 0.5, 0.0, 0.5])  # 0.5 + 0.5 + 0.5
    assert got[0, 0, 0, 1, 1] == 1.0  # nothing there: background
    # The loss counts the frames not given: a head right on frame 0 alone is only right there.
    right = torch.log(got.flatten(2).transpose(1, 2).clamp(min=1e-6))  # [B, N, K] logits
    wrong = right.flip(-1)
    mixed = torch.cat([right[:, :4], wrong[:, 4:]], 1)  # tokens in (t h w) order: frame 0 first
    only0, only1 = torch.tensor([[True, False]]), torch.tensor([[False, True]])
    assert shape_map_loss(mixed, got, only0) < 0.01 < shape_map_loss(mixed, got, only1)
    assert shape_map_loss(mixed, got, torch.zeros(1, 2, dtype=torch.bool)) == 0
    # Which shape counts on its own: an object right as an object but the wrong shape costs
    # the second term's full cross-entropy (log 1e6 = 13.8), not only its 1/4 share of the
    # first term's mean over frame 0's 4 tokens (3.5).
    swapped = right.clone()
    swapped[0, 0, [2, 3]] = swapped[0, 0, [3, 2]]  # token (0, 0, 0): square -> triangle
    assert shape_map_loss(swapped, got, only0) > 13


def test_dit_features_are_the_tokens_after_the_named_block():
    from kinetoscope.models.dit import DiT, dit_config

    torch.manual_seed(0)
    dit = DiT(dit_config("tiny", dim=32, ffn_dim=64, num_layers=3, num_heads=2, text_dim=16,
                         in_channels=4, out_channels=4, patch_size=(1, 2, 2)))  # fmt: skip
    for p in dit.parameters():  # adaLN-zero starts every block as the identity: perturb it
        p.data += 0.05 * torch.randn_like(p)
    x, t, ctx = torch.randn(2, 4, 3, 6, 10), torch.rand(2), torch.randn(2, 5, 16)
    seen = []
    dit.blocks[1].register_forward_hook(lambda m, i, out: seen.append(out))
    v, hidden = dit(x, t, ctx, features=1)
    assert hidden.shape == (2, 3 * 3 * 5, 32)
    torch.testing.assert_close(hidden, seen[0])
    torch.testing.assert_close(v, dit(x, t, ctx))  # the velocity is the same either way
    with pytest.raises(ValueError, match="features must name one of 3 blocks"):
        dit(x, t, ctx, features=3)


def test_shape_weight_adds_the_shape_map_loss_and_exports_without_its_head(
    tmp_path, capsys, micro_dit
):
    """train.shape_weight: the same seed, clips and noise; the head's loss comes on top, and
    the head stays in the run's checkpoints."""
    from kinetoscope.pretrained import dit_text_weights

    base = ["model.stage=dit", "model.vae=micro", "model.dit=micro", "model.text=micro",
            "data.buckets=[[5,16,16]]", "data.image_share=0.0", "data.num_workers=0",
            "data.max_batch_size=2", "train.steps=1", "train.sample_every=1000"]  # fmt: skip
    for name, w in (("plain", 0.0), ("shapes", 1.0)):  # micro has one block: block 0
        args = [*base, f"train.shape_weight={w}", "train.shape_block=0",
                f"train.out={tmp_path / name}"]  # fmt: skip
        assert main(["train", "/dev/null", *args]) == 0
    plain, shaped = (read_metrics(tmp_path / n)[0] for n in ("plain", "shapes"))
    assert shaped["loss"] > plain["loss"] + 0.5  # a fresh 4-way head: about log 4 more
    # metrics.jsonl logs each term before its weight where the loss has more than one
    assert shaped["loss_flow"] == pytest.approx(plain["loss"], rel=1e-4)
    assert shaped["loss"] == pytest.approx(shaped["loss_flow"] + shaped["loss_shape"], rel=1e-5)
    assert not any(k.startswith("loss_") for k in plain)
    tensors = C.load_checkpoint(tmp_path / "shapes")[0]["model"]
    assert tensors["shape_head.1.weight"].shape[0] == 4
    dit, text = dit_text_weights(tmp_path / "shapes")
    assert dit.keys() == dit_text_weights(tmp_path / "plain")[0].keys()

    for bad, msg in (
        ("train.shape_block=1", "train.shape_block must name one of the DiT's"),
        ("data.latent_cache=somewhere", "train.shape_weight needs the object masks"),
    ):
        args = [*base, "train.shape_weight=1", bad, f"train.out={tmp_path / 'bad'}"]
        assert main(["train", "/dev/null", *args]) == 2
        assert msg in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()


def test_the_dit_learns_to_follow_its_text():
    """Two captions, two clips: after a short training each caption samples its own clip."""
    from kinetoscope.diffusion.flow import flow_loss
    from kinetoscope.models.dit import DiT, dit_config
    from kinetoscope.models.text import ByteTextConfig, ByteTextEncoder
    from kinetoscope.train.trainer import TextToVideo

    torch.manual_seed(0)
    text = ByteTextEncoder(ByteTextConfig(dim=32, num_layers=1, num_heads=2, ffn_dim=64))
    dit = DiT(dit_config("tiny", dim=64, ffn_dim=128, num_layers=2, num_heads=2, text_dim=32,
                         in_channels=4, out_channels=4, patch_size=(1, 2, 2)))  # fmt: skip
    model = TextToVideo(dit, text)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    captions = ["a red ball", "a blue cube"]
    clips = torch.stack([torch.ones(4, 3, 8, 8), -torch.ones(4, 3, 8, 8)])  # [2, C, T, H, W]
    ids, mask = text.tokenize(captions * 4)
    for _ in range(150):
        loss = flow_loss(model, clips.repeat(4, 1, 1, 1, 1), torch.rand(8),
                         torch.randn(8, 4, 3, 8, 8), ids, mask)  # fmt: skip
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        ids, mask = text.tokenize(captions)
        x1 = torch.randn(1, 4, 3, 8, 8).repeat(2, 1, 1, 1, 1)  # the same noise for both
        x0 = x1 - model(x1, torch.ones(2, 3), ids, mask)  # one Euler step from t=1 to 0
    means = x0.mean((1, 2, 3, 4))
    assert means[0] > 0.5 and means[1] < -0.5, means


@pytest.mark.parametrize(
    "recipe, sizes",
    [("shapeworld-tiny-vae", [4, 16]), ("shapeworld-tiny-dit", [8, 16])],  # clips, images
)
def test_shipped_recipes_batch_as_documented(recipe, sizes):
    from pathlib import Path

    from kinetoscope.data.shapeworld import ShapeWorldClips
    from kinetoscope.train.config import load_config
    from kinetoscope.train.trainer import token_kwargs

    cfg = load_config(Path(__file__).parents[1] / "configs" / f"{recipe}.yaml")
    assert ShapeWorldClips.from_config(cfg, tokens=token_kwargs(cfg)).batch_sizes == sizes


def test_rendered_clips_count_tokens_as_the_recipes_dit_cuts_them():
    """A tiny (4x) VAE with the `small` DiT's 2x2 patches: 9 x 8 x 8 = 576 tokens per clip."""
    from kinetoscope.data.latent_cache import batch_size_for_latent
    from kinetoscope.data.shapeworld import ShapeWorldClips
    from kinetoscope.train.trainer import token_kwargs

    cfg = resolve({}, ["model.vae=tiny", "model.dit=small", "data.buckets=[[33,64,64]]",
                       "data.image_share=0", "data.tokens_per_batch=1152"])  # fmt: skip
    rendered = ShapeWorldClips.from_config(cfg, tokens=token_kwargs(cfg)).batch_sizes
    cached = batch_size_for_latent((16, 9, 16, 16), 1152, patch=token_kwargs(cfg)["patch"])
    assert rendered == [cached] == [2]


def test_a_dit_run_loads_with_sampling_defaults_from_its_conditions(tmp_path, micro_dit):
    """keyframe follows first-frame training, guide_frames follows prefix training."""
    from kinetoscope.pipeline import Pipeline

    base = ["model.stage=dit", "model.vae=tiny", "model.vae_path=shapeworld-tiny",
            "model.dit=micro", "model.text=micro", "data.buckets=[[1,16,16]]",
            "data.image_share=1.0", "data.num_workers=0", "data.max_batch_size=2",
            "train.steps=1", "train.sample_every=1000"]  # fmt: skip
    runs = {"both": [], "neither": ["train.conditions.first_frame=0", "train.conditions.prefix=0"]}
    for name, extra in runs.items():
        assert main(["train", "/dev/null", *base, *extra, f"train.out={tmp_path / name}"]) == 0
        d = Pipeline.from_pretrained(tmp_path / name, device="cpu").defaults
        assert (d.keyframe, d.guide_frames) == ((True, True) if name == "both" else (False, False))
