"""The Pipeline on a tiny random model: loading, shapes, seeds, frame conditions, editing.

The model's weights are random (nothing here says anything about quality): what is tested is
what a user relies on whatever the weights are: sizes and lengths, determinism, given frames
kept exactly, strength 0 = the input's round trip, windows for long videos, clear errors.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from kinetoscope.diffusion.conditioning import FrameCondition
from kinetoscope.errors import UserError
from kinetoscope.models.dit import DiT, DiTConfig
from kinetoscope.models.text import ByteTextConfig, ByteTextEncoder
from kinetoscope.models.vae import VAE, VAEConfig
from kinetoscope.pipeline import Notice, Pipeline, PipelineDefaults
from kinetoscope.video import Video


def tiny_pipeline(seed: int = 0) -> Pipeline:
    """Returns a random ~40k-parameter pipeline at 32x32, 2 steps, windows of 3 latents."""
    torch.manual_seed(seed)
    vae = VAE(VAEConfig(dim=4, dim_mult=(1, 1, 1, 1)))
    text = ByteTextEncoder(ByteTextConfig(dim=32, num_layers=1, num_heads=2, ffn_dim=64))
    dit = DiT(DiTConfig(dim=32, ffn_dim=64, num_layers=1, num_heads=2, text_dim=32))
    with torch.no_grad():  # adaLN-zero starts at velocity 0: perturb so outputs depend on inputs
        for p in dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    d = PipelineDefaults(width=32, height=32, fps=8.0, seconds=1.0, steps=2, guidance=2.0,
                         window=3, overlap=1, transition=0.5)  # fmt: skip
    return Pipeline(vae, dit, text, d, device="cpu", dtype=torch.float32, name="tiny-random")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_pipeline().save_pretrained(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def pipe(model_dir):
    return Pipeline.from_pretrained(model_dir, device="cpu", dtype=torch.float32)


def clip(t: int = 9, h: int = 32, w: int = 32, seed: int = 0) -> Video:
    """Returns a random uint8 video (random, so a frame copied from elsewhere cannot match)."""
    rng = np.random.default_rng(seed)
    return Video(rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8), fps=8.0)


def gen(pipe, **kw):
    kw = {"seed": 0, "progress": False, "expand": False, **kw}
    return pipe.generate("a red ball bouncing in the snow", **kw)


# ---- loading and saving ---------------------------------------------------------------------


def test_save_then_load_gives_the_same_weights_and_defaults(model_dir, pipe):
    ref = tiny_pipeline()
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["format"] == "kinetoscope-pipeline" and cfg["defaults"]["window"] == 3
    assert (model_dir / "README.md").read_text().startswith("# tiny-random")
    for f in model_dir.iterdir():  # safetensors writes 0600; a model folder is for sharing
        assert f.stat().st_mode & 0o777 == 0o666 & ~_umask(), f.name
    for a, b in ((ref.vae, pipe.vae), (ref.dit, pipe.dit), (ref.text_encoder, pipe.text_encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert pipe.defaults == ref.defaults
    assert np.array_equal(gen(ref, frames=5).frames, gen(pipe, frames=5).frames)


def test_convert_writes_a_card_that_says_what_the_model_is(model_dir, tmp_path):
    from kinetoscope.cli import main

    out = tmp_path / "mine"
    assert main(["convert", str(model_dir), "--out", str(out), "--name", "mine"]) == 0
    card = (out / "README.md").read_text()
    assert card.startswith("# mine\n") and "A kinetoscope model" in card and "Wan" not in card
    assert "byte-level encoder" in card and "shift by token count), guidance 2\n" in card


def test_convert_swaps_in_a_decoder_only_when_the_encoder_is_the_same(model_dir, tmp_path, capsys):
    from kinetoscope.cli import main

    def variant(name: str, part: str) -> Path:  # the tiny model with one part of its VAE changed
        p = tiny_pipeline()
        with torch.no_grad():
            for w in getattr(p.vae, part).parameters():
                w.add_(0.01)
        return p.save_pretrained(tmp_path / name)

    decoder, encoder = variant("new-decoder", "decoder"), variant("new-encoder", "encoder")
    out = tmp_path / "swapped"
    assert main(["convert", str(model_dir), "--out", str(out), "--vae", str(decoder)]) == 0
    got = Pipeline.from_pretrained(out, device="cpu", dtype=torch.float32)
    want = Pipeline.from_pretrained(decoder, device="cpu", dtype=torch.float32)
    ref = tiny_pipeline()
    for a, b in ((got.vae, want.vae), (got.dit, ref.dit), (got.text_encoder, ref.text_encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)

    for vae, message in ((encoder, "its encoder is not the one"), (tmp_path / "none", "no such")):
        refused = tmp_path / "refused"
        assert main(["convert", str(model_dir), "--out", str(refused), "--vae", str(vae)]) == 2
        assert message in capsys.readouterr().err and not refused.exists()


def test_convert_swaps_in_a_wider_decoder_grown_from_the_models_own(model_dir, tmp_path):
    """A decoder widened from the model's own (VAEConfig.dec_dim_mult, widen_decoder) keeps
    the latents, so convert takes it; the folder loads and decodes as before."""
    from kinetoscope.cli import main
    from kinetoscope.models.vae import widen_decoder

    p = tiny_pipeline()
    wide = VAE(replace(p.vae.cfg, dec_dim_mult=(2, 1, 1, 1)))
    wide.load_state_dict(widen_decoder(p.vae.state_dict(), wide))
    narrow, p.vae = p.vae, wide
    src = p.save_pretrained(tmp_path / "wide-decoder")
    out = tmp_path / "swapped"
    assert main(["convert", str(model_dir), "--out", str(out), "--vae", str(src)]) == 0
    got = Pipeline.from_pretrained(out, device="cpu", dtype=torch.float32)
    assert got.vae.cfg.dec_dim_mult == (2, 1, 1, 1)
    z = torch.randn(1, 16, 2, 4, 4)
    with torch.no_grad():
        want = narrow.decode(z)
        assert (got.vae.decode(z) - want).abs().max() < 1e-3 * want.abs().max()


def test_bfloat16_storage_halves_matrices_and_keeps_buffers_exact(tmp_path):
    ref = tiny_pipeline()
    half = ref.save_pretrained(tmp_path / "half", weights_dtype=torch.bfloat16)
    full = ref.save_pretrained(tmp_path / "full")
    assert (half / "dit.safetensors").stat().st_size < 0.6 * (
        full / "dit.safetensors"
    ).stat().st_size
    back = Pipeline.from_pretrained(half, device="cpu", dtype=torch.float32)
    for a, b in ((ref.vae, back.vae), (ref.dit, back.dit)):
        params = dict(a.named_parameters())
        for k, v in a.state_dict().items():
            w = b.state_dict()[k]
            if k in params and v.ndim >= 2:
                assert torch.equal(w, v.to(torch.bfloat16).float())  # rounded once, cast back
            else:
                assert torch.equal(w, v)  # norms, biases, latent statistics: exact


def test_load_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        Pipeline.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a model folder"):
        Pipeline.from_pretrained(tmp_path / "empty")
    other = tiny_pipeline().save_pretrained(tmp_path / "other")  # weights of another config
    cfg = json.loads((other / "config.json").read_text())
    cfg["dit"]["num_layers"] += 1
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="dit.safetensors: its weights do not match"):
        Pipeline.from_pretrained(other)
    wan = tmp_path / "wan"
    wan.mkdir()
    (wan / "model_index.json").write_text("{}")
    try:
        import kinetoscope.interop.wan  # noqa: F401
    except ModuleNotFoundError:
        with pytest.raises(UserError, match="Wan2.1"):
            Pipeline.from_pretrained(wan)


def test_bundled_model_missing_says_what_to_do(tmp_path, monkeypatch):
    import kinetoscope.pretrained as P

    monkeypatch.setattr(P, "WEIGHTS", tmp_path)  # an install without the weights folder
    with pytest.raises(UserError, match="not in this install yet; pass --model PATH"):
        Pipeline.from_pretrained("shapeworld-tiny")


def test_loads_a_training_run_with_its_ema_weights(tmp_path):
    from kinetoscope.models.dit import dit_config
    from kinetoscope.models.text import byte_text_config
    from kinetoscope.train.checkpoint import save_checkpoint
    from kinetoscope.train.config import resolve
    from kinetoscope.train.trainer import TextToVideo

    vae = VAE.from_preset("tiny")
    vae_cfg = resolve({"model": {"stage": "vae"}, "train": {"out": str(tmp_path / "vae")}})
    vae_ema = {k: v + 1 for k, v in vae.named_parameters()}  # EMA holds parameters only
    save_checkpoint(tmp_path / "vae", 5, {"model": vae.state_dict(), "ema": vae_ema}, {}, vae_cfg)
    text_cfg = byte_text_config("tiny")
    model = TextToVideo(DiT(dit_config("tiny", text_dim=text_cfg.dim)), ByteTextEncoder(text_cfg))
    ema = {k: v * 2 for k, v in model.named_parameters()}
    dit_run = {"model": {"stage": "dit", "vae_path": str(tmp_path / "vae")}}
    cfg = resolve(dit_run, ["train.shift=3", "train.noise_corr=0.25"])
    save_checkpoint(tmp_path / "dit", 20, {"model": model.state_dict(), "ema": ema}, {}, cfg)
    (tmp_path / "dit" / ".tmp-step_000030-1").mkdir()  # an interrupted write is never read

    p = Pipeline.from_pretrained(tmp_path / "dit", device="cpu")
    assert p.name == "dit@step_000020"
    w = p.dit.blocks[0].self_attn.q.weight
    assert torch.equal(w, ema["dit.blocks.0.self_attn.q.weight"])
    assert torch.equal(p.text_encoder.token_embedding.weight, ema["text.token_embedding.weight"])
    assert torch.equal(p.vae.decoder.conv_in.weight, vae_ema["decoder.conv_in.weight"])
    assert (p.defaults.width, p.defaults.height, p.defaults.window) == (64, 64, 9)
    assert p.defaults.shift == 3.0  # it samples with the shift it trained with
    assert p.defaults.noise_corr == 0.25  # ... and the noise
    with pytest.raises(UserError, match="is a vae run"):
        Pipeline.from_pretrained(tmp_path / "vae")


# ---- text to video ------------------------------------------------------------------------------


def test_odd_sizes_and_lengths_are_rounded_with_a_notice(pipe):
    with pytest.warns(Notice) as notes:
        v = gen(pipe, frames=7, size=(40, 56))
    assert v.frames.shape == (9, 64, 48, 3)  # 7 -> 1 + 4*2; 40 -> 48, 56 -> 64 (nearest 16s)
    text = " ".join(str(n.message) for n in notes)
    assert "7 frames rounded to 9" in text and "40x56 rounded to 48x64" in text


def test_seconds_give_frames_at_the_default_rate(pipe):
    with warnings.catch_warnings():
        warnings.simplefilter("error", Notice)  # 1.25 s at 8 fps = 11 frames: rounded, noticed
        with pytest.raises(Notice):
            gen(pipe, seconds=1.25)
        v = gen(pipe, seconds=1.0)  # 1 s at 8 fps spans 8 intervals: 9 frames, no notice
    assert (v.num_frames, v.fps, v.width, v.height) == (9, 8.0, 32, 32)


def test_same_seed_same_video_other_seed_other_video(pipe):
    a, b, c = gen(pipe, frames=5), gen(pipe, frames=5), gen(pipe, frames=5, seed=1)
    assert np.array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, c.frames)


def test_a_model_trained_on_correlated_noise_samples_from_it_seeded(pipe):
    from dataclasses import replace

    corr = Pipeline(pipe.vae, pipe.dit, pipe.text_encoder, replace(pipe.defaults, noise_corr=0.5),
                    device="cpu", dtype=torch.float32)  # fmt: skip
    a, b = gen(corr, frames=9), gen(corr, frames=9)
    assert np.array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, gen(pipe, frames=9).frames)  # other noise, other video
    with pytest.raises(ValueError, match="noise_corr must be in"):
        replace(pipe.defaults, noise_corr=1.0)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="shift must be > 0"):
            replace(pipe.defaults, shift=bad)


def test_expanded_prompt_is_used_and_stored(pipe, tmp_path):
    v = pipe.generate("a red ball", frames=5, seed=3, progress=False)
    assert v.metadata["prompt"] == "a red ball"
    assert len(v.metadata["expanded_prompt"]) > len("a red ball")
    assert v.metadata["title"] == "a red ball"
    raw = pipe.generate("a red ball", frames=5, seed=3, progress=False, expand=False)
    assert raw.metadata["expanded_prompt"] == "a red ball"
    assert not np.array_equal(v.frames, raw.frames)  # the model saw a different text


def test_long_video_runs_in_windows_and_streams_to_file(pipe, tmp_path, monkeypatch):
    import av

    calls = []
    sample = pipe.sample_latents
    monkeypatch.setattr(pipe, "sample_latents", lambda p, size, *a, **k: (
        calls.append(size[0]), sample(p, size, *a, **k))[1])  # fmt: skip
    out = pipe.generate_to_file(tmp_path / "long.mp4", "a ball", frames=25, progress=False)
    # 25 frames = 7 latents; windows of 3 with 1 known: 3 new, then 2 new per window.
    assert calls == [3, 3, 3]
    assert Video.read(out).num_frames == 25
    with av.open(str(out)) as c:
        assert c.metadata["title"] == "a ball"
    assert gen(pipe, frames=25).num_frames == 25


def test_keyframe_first_video_starts_with_the_prompts_image(pipe, monkeypatch):
    calls = []
    sample = pipe.sample_latents
    monkeypatch.setattr(pipe, "sample_latents", lambda p, size, *a, **k: (
        calls.append(size[0]), sample(p, size, *a, **k))[1])  # fmt: skip
    monkeypatch.setattr(pipe, "defaults", replace(pipe.defaults, keyframe=True))
    v = gen(pipe, frames=25, seed=4)
    # 7 latents: frame 0 alone, then windows of 3 with 1 known: 2 new each.
    assert calls == [1, 3, 3, 3]
    assert v.num_frames == 25
    image = pipe.image("a red ball bouncing in the snow", seed=4, expand=False, progress=False)
    assert np.abs(v.frames[0].astype(int) - image.frames[0].astype(int)).max() <= 1
    assert np.array_equal(v.frames, gen(pipe, frames=25, seed=4).frames)  # still seeded
    calls.clear()
    assert gen(pipe, frames=1).num_frames == 1 and calls == [1]  # an image is not made twice


@pytest.mark.filterwarnings("ignore::kinetoscope.pipeline.Notice")  # seconds rounded
def test_guide_frames_guides_only_windows_that_continue_a_video(pipe, monkeypatch):
    calls = []  # (latent frames, known latent frames, guide_frames) per sampler call
    sample = pipe.sample_latents

    def record(p, size, gen, cond=None, **k):
        known = 0 if cond is None else int(cond.mask.sum())
        calls.append((size[0], known, k.get("guide_frames", False)))
        return sample(p, size, gen, cond, **k)

    monkeypatch.setattr(pipe, "sample_latents", record)
    d = replace(pipe.defaults, window=5, overlap=2, keyframe=True, guide_frames=True)
    monkeypatch.setattr(pipe, "defaults", d)
    gen(pipe, frames=25)  # 7 latents: keyframe, a window from it, then windows of 2 known
    assert calls == [(1, 0, False), (5, 1, False), (4, 2, True)]
    calls.clear()
    pipe.animate(clip(1), "a ball", frames=9, progress=False, expand=False)
    assert calls == [(3, 1, False)]  # one known frame: as the keyframe, not guided
    calls.clear()
    kw = dict(seconds=1.0, progress=False, expand=False)
    pipe.extend(clip(9), "a ball", direction="forward", **kw)
    pipe.extend(clip(9), "a ball", direction="backward", **kw)
    assert [c[2] for c in calls] == [True, True]  # a prefix of 2 latents; a closing suffix
    calls.clear()
    monkeypatch.setattr(pipe, "defaults", replace(d, guide_frames=False))
    gen(pipe, frames=25)
    assert [c[2] for c in calls] == [False] * 3


def test_too_long_or_empty_durations_are_refused(pipe):
    for seconds in (0, -1, 601, float("nan")):
        with pytest.raises(UserError, match="--seconds"):
            gen(pipe, seconds=seconds)
    with pytest.raises(UserError, match="out of range"):
        gen(pipe, size=(4096, 64))


# ---- frame conditions -----------------------------------------------------------------------


def test_known_latents_come_back_exactly(pipe):
    p = pipe.encode_prompt("a ball", expand=False)
    known = torch.randn(1, 16, 2, 4, 4)
    cond = FrameCondition.prefix(known, 4)
    z = pipe.sample_latents(p, (4, 32, 32), torch.Generator().manual_seed(0), cond)
    assert torch.equal(z[:, :, :2], known)
    assert not torch.equal(z[:, :, 2:], torch.zeros_like(z[:, :, 2:]))


def test_animate_starts_with_the_fitted_image(pipe):
    img = clip(1, 40, 60)  # aspect 3:2
    v = pipe.animate(img, "a ball", frames=9, seed=0, progress=False, expand=False)
    assert v.frames.shape == (9, 32, 48, 3)  # its own aspect at about the model's 32x32 area
    assert np.array_equal(v.frames[0], img.fit(48, 32).frames[0])
    v = pipe.animate(img, "a ball", frames=9, size=(32, 32), progress=False, expand=False)
    assert np.array_equal(v.frames[0], img.fit(32, 32).frames[0])


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_extend_keeps_every_original_frame(pipe, direction):
    src = clip(10)
    v = pipe.extend(src, "a ball", seconds=1.0, direction=direction, progress=False, expand=False)
    if direction == "forward":
        assert v.num_frames == 10 + 8  # 1 s = 8 new frames, 2 latents
        assert np.array_equal(v.frames[:10], src.frames)
    else:
        assert v.num_frames == 9 + 10  # before a clip's start the first latent is 1 frame
        assert np.array_equal(v.frames[-10:], src.frames)


def test_extend_refuses_a_size_it_cannot_keep(pipe):
    with pytest.raises(UserError, match="--size 48x32"):
        pipe.extend(clip(5, 24, 40), "a ball", progress=False)


def test_connect_is_a_then_transition_then_b(pipe):
    a, b = clip(9, seed=1), clip(6, seed=2)
    v = pipe.connect(a, b, "a ball", seconds=1.0, progress=False, expand=False)
    assert v.num_frames == 9 + 8 + 6
    assert np.array_equal(v.frames[:9], a.frames)
    assert np.array_equal(v.frames[-6:], b.frames)


def test_loop_appends_a_transition_back_to_the_start(pipe):
    src = clip(9)
    v = pipe.loop("a ball", video=src, transition=1.0, progress=False, expand=False)
    assert v.num_frames == 9 + 8
    assert np.array_equal(v.frames[:9], src.frames)
    made = pipe.loop("a ball", seconds=1.125, transition=0.5, progress=False, expand=False)
    assert made.num_frames == 9 + 4


# ---- editing and images ---------------------------------------------------------------------


def test_edit_at_strength_zero_is_the_vae_round_trip(pipe):
    src = clip(7)  # not 1 + 4k frames: padded for the VAE, cut back after
    v = pipe.edit(src, "a ball in the desert", strength=0.0, progress=False)
    assert v.num_frames == 7
    padded = np.concatenate([src.frames, src.frames[-1:].repeat(2, 0)])
    round_trip = np.concatenate(list(pipe.decode_chunks(pipe.encode_frames(padded))))[:7]
    assert np.array_equal(v.frames, round_trip)
    edited = pipe.edit(src, "a ball in the desert", strength=0.8, progress=False)
    assert edited.frames.shape == src.frames.shape
    assert not np.array_equal(edited.frames, round_trip)


def test_edit_from_the_inversion_needs_no_seed_and_keeps_strength_zero(pipe):
    src = clip(9)
    kw = dict(strength=0.6, progress=False, expand=False)
    a, b = (pipe.edit(src, "a ball in the desert", seed=s, invert=True, **kw) for s in (0, 1))
    assert np.array_equal(a.frames, b.frames)  # no random noise anywhere
    assert a.metadata["invert"] is True
    sdedit = pipe.edit(src, "a ball in the desert", seed=0, **kw)
    assert not np.array_equal(a.frames, sdedit.frames)
    zero = dict(kw, strength=0.0)
    assert np.array_equal(pipe.edit(src, "a ball", invert=True, **zero).frames,
                          pipe.edit(src, "a ball", **zero).frames)  # fmt: skip


def test_edit_strength_outside_0_1_is_refused(pipe):
    for s in (-0.1, 1.5):
        with pytest.raises(UserError, match="--strength"):
            pipe.edit(clip(5), "a ball", strength=s, progress=False)


def test_image_small_and_large(pipe):
    small = pipe.image("a ball", size=(48, 32), progress=False, expand=False)
    assert small.frames.shape == (1, 32, 48, 3)
    large = pipe.image("a ball", size=(160, 96), progress=False, expand=False)  # refined in tiles
    assert large.frames.shape == (1, 96, 160, 3)
    again = pipe.image("a ball", size=(160, 96), progress=False, expand=False)
    assert np.array_equal(large.frames, again.frames)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
