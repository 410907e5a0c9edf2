"""Training data: ShapeWorld stream, buckets, real-video manifests, latent cache."""

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from kinetoscope.data.buckets import (
    Bucket,
    BucketBatchSampler,
    assign_bucket,
    batch_size_for,
    latent_tokens,
    make_buckets,
)
from kinetoscope.data.latent_cache import LatentCache, build_latent_cache, collate_latents
from kinetoscope.data.manifest import ManifestClips, collate, frame_indices
from kinetoscope.data.shapeworld import ShapeWorldClips, loader
from kinetoscope.train.config import resolve
from kinetoscope.video import Video
from kinetoscope.world.scene import HELDOUT, is_excluded, sample_scene

BUCKETS = make_buckets([[9, 32, 32], [5, 32, 48], [1, 32, 32]])


def _world(**kw):
    args = dict(buckets=BUCKETS, batch_sizes=[2, 2, 3], image_share=0.3, seed=7)
    return ShapeWorldClips(**{**args, **kw})


def _take(it, n):
    return [b for _, b in zip(range(n), it)]


def _same(a, b):
    assert [x["index"] for x in a] == [x["index"] for x in b]
    for x, y in zip(a, b):
        assert x["caption"] == y["caption"] and x["bucket"] == y["bucket"]
        assert torch.equal(x["video"], y["video"])


# ---- ShapeWorld -------------------------------------------------------------------------------


def test_shapeworld_same_stream_for_any_worker_count():
    one = _take(iter(loader(_world(), num_workers=0)), 6)
    two = _take(iter(loader(_world(), num_workers=2)), 6)
    _same(one, two)
    assert [b["index"] for b in one] == list(range(6))
    shapes = {tuple(b["video"].shape[2:]) for b in one}
    assert len(shapes) > 1  # more than one bucket in six batches with this seed
    for b in one:
        t, h, w = b["bucket"]
        assert b["video"].shape == (len(b["caption"]), 3, t, h, w)
        assert b["video"].min() >= -1 and b["video"].max() <= 1
        assert b["video"].std() > 0.05  # rendered pixels, not a blank tensor
    other = _take(iter(_world(seed=8)), 2)
    assert [b["caption"] for b in other] != [b["caption"] for b in one[:2]]


def test_shapeworld_ranks_split_the_global_batch_and_resume():
    whole = _take(iter(_world(batch_sizes=[4, 4, 6])), 4)
    ranks = [_take(iter(_world(rank=r, world_size=2)), 4) for r in range(2)]
    for j in range(4):
        assert whole[j]["caption"] == ranks[0][j]["caption"] + ranks[1][j]["caption"]
        joined = torch.cat([ranks[0][j]["video"], ranks[1][j]["video"]])
        assert torch.equal(whole[j]["video"], joined)
    resumed = _take(iter(_world(batch_sizes=[4, 4, 6], start=2)), 2)
    _same(whole[2:], resumed)


def test_shapeworld_captions_describe_the_scene():
    s = _world().sample(0, 0)
    assert isinstance(s["caption"], str) and len(s["caption"].split()) > 5
    for obj in s["scene"]["objects"]:
        assert obj["color"] in s["caption"]


def test_heldout_combinations_never_appear():
    ds = _world()
    scenes = [ds.scene(j, k)[0] for j in range(300) for k in range(4)]
    assert not any(is_excluded(s, HELDOUT) for s in scenes)
    # The check can fail: without the exclusion, held-out objects do come up.
    free = _world(exclude_heldout=False)
    assert any(is_excluded(free.scene(j, k)[0], HELDOUT) for j in range(300) for k in range(4))


def test_image_share_of_batches():
    ds = _world(image_share=0.3)
    picks = [ds.buckets[ds.bucket_of(j)].is_image for j in range(4000)]
    assert abs(np.mean(picks) - 0.3) < 0.03
    ds0 = _world(image_share=0.0)
    assert not any(ds0.buckets[ds0.bucket_of(j)].is_image for j in range(200))


def test_simple_share_of_one_object_static_camera_scenes():
    def simple(ds):
        scenes = [ds.scene(j, k)[0] for j in range(400) for k in range(3)]
        one = [len(s.objects) == 1 and s.camera == "static" for s in scenes]
        assert not any(is_excluded(s, HELDOUT) for s in scenes)
        return np.mean(one), {s.environment for s in scenes}

    share, envs = simple(_world(simple_share=0.5))
    # Full scenes are one object under a static camera 1/3 x 1/5 of the time.
    assert abs(share - (0.5 + 0.5 / 15)) < 0.05 and len(envs) == 5
    assert abs(simple(_world())[0] - 1 / 15) < 0.03
    # At 0 the stream is the one recipes had before the option (no extra draw).
    before = sample_scene(np.random.default_rng([7, 2, 3, 1]), exclude=HELDOUT)
    assert _world(simple_share=0.0).scene(3, 1)[0] == before
    with pytest.raises(ValueError, match="simple_share"):
        _world(simple_share=1.5)


def test_shapeworld_from_config():
    cfg = resolve({}, ["data.tokens_per_batch=1152", "data.max_batch_size=32", "train.seed=3",
                       "data.simple_share=0.25"])  # fmt: skip
    ds = ShapeWorldClips.from_config(cfg, rank=1, world_size=2, start=5)
    assert [str(b) for b in ds.buckets] == ["33x64x64", "1x64x64"]
    assert ds.batch_sizes == [8, 32] and ds.seed == 3 and ds.rank == 1 and ds.start == 5
    assert ds.simple_share == 0.25
    assert not ds.coverage and "coverage" not in ds.batch(5)  # masks only when a loss reads them
    weighted = resolve({}, ["data.tokens_per_batch=1152", "train.object_weight=2"])
    batch = ShapeWorldClips.from_config(weighted).batch(0)
    assert batch["coverage"].dtype == torch.uint8
    assert batch["coverage"].shape[2:] == batch["video"].shape[2:]  # [B, S, T, H, W]
    assert batch["coverage"].shape[:2] == (len(batch["video"]), 3)  # a map per shape
    assert "pair" not in batch
    shaped = resolve({}, ["data.tokens_per_batch=1152", "train.shape_weight=1"])
    assert ShapeWorldClips.from_config(shaped).coverage  # the shape map reads them too


def test_pairs_change_one_word_and_only_the_pixels_of_its_object():
    from kinetoscope.world.captions import parse_prompt

    keys = ["train.pair_weight=1", "train.pair_keys=[shape, motion]"]
    cfg = resolve({}, ["data.tokens_per_batch=1152", "data.simple_share=0.5", *keys])
    ds = ShapeWorldClips.from_config(cfg)
    assert ds.coverage  # the pair term counts the objects' positions
    seen, changed_keys = 0, set()
    for j in range(4):
        batch = ds.batch(j)
        pair = batch["pair"]
        ones = [i for i, s in enumerate(batch["scene"]) if len(s["objects"]) == 1]
        assert (pair["index"] if pair else []) == ones  # every one-object clip has its twin
        if not pair:
            continue
        assert pair["video"].shape == batch["video"][ones].shape
        assert pair["coverage"].shape == batch["coverage"][ones].shape
        torch.testing.assert_close(pair["video"], ds.batch(j)["pair"]["video"])  # (seed, j, k)
        for n, i in enumerate(ones):
            seen += 1
            true, other = (parse_prompt(c).scene.objects[0]
                           for c in (batch["caption"][i], pair["caption"][n]))  # fmt: skip
            changed = [
                k
                for k in ("shape", "color", "size", "motion", "speed")
                if None not in (getattr(true, k), getattr(other, k))
                and getattr(true, k) != getattr(other, k)
            ]  # (a still object has no speed)
            assert len(changed) == 1 and changed[0] in ("shape", "motion")
            changed_keys.add(changed[0])
            # The same render seed: where neither object is, the pixels are the same (to one
            # level of 255, for the masks' antialiased edges rounded to 0).
            free = (batch["coverage"][i].amax(0) == 0) & (pair["coverage"][n].amax(0) == 0)
            diff = (batch["video"][i] - pair["video"][n]).abs().amax(0) * 127.5
            assert diff[free].max() <= 1.001 and diff[~free].max() > 10
    assert seen >= 4 and changed_keys == {"shape", "motion"}


# ---- buckets ----------------------------------------------------------------------------------


def test_latent_tokens_and_batch_size_from_token_budget():
    assert latent_tokens(Bucket(33, 64, 64)) == 9 * 4 * 4
    assert latent_tokens(Bucket(1, 64, 64)) == 16
    assert latent_tokens(Bucket(17, 64, 112)) == 5 * 4 * 7
    assert latent_tokens(Bucket(33, 64, 64), time_down=8, space_down=16, patch=(1, 1, 1)) == 5 * 16
    assert batch_size_for(Bucket(33, 64, 64), 1152) == 8
    assert batch_size_for(Bucket(1, 64, 64), 1152) == 72
    assert batch_size_for(Bucket(1, 64, 64), 1152, max_batch_size=32) == 32
    assert batch_size_for(Bucket(33, 256, 256), 100) == 1  # never zero


def test_assign_bucket_by_aspect_then_longest_duration():
    bs = make_buckets([[33, 64, 64], [33, 64, 112], [17, 64, 112], [1, 64, 112], [17, 112, 64]])
    assert assign_bucket(100, 720, 1280, bs) == 1  # 16:9, long enough for 33 frames
    assert assign_bucket(20, 720, 1280, bs) == 2  # too short for 33, fits 17
    assert assign_bucket(5, 720, 1280, bs) == 3  # only the image bucket fits
    assert assign_bucket(40, 480, 480, bs) == 0  # square
    assert assign_bucket(40, 1280, 720, bs) == 4  # portrait
    assert assign_bucket(10, 1280, 720, bs) is None  # too short for every portrait bucket


def test_bucket_batch_sampler_same_bucket_deterministic_disjoint():
    assignments = [i % 3 for i in range(60)] + [None] * 5
    sizes = [4, 3, 5]
    s = BucketBatchSampler(assignments, sizes, seed=1)
    epoch = _take(iter(s), len(s))
    for batch in epoch:
        assert len({assignments[i] for i in batch}) == 1
        assert len(batch) == sizes[assignments[batch[0]]]
    flat = [i for b in epoch for i in b]
    assert len(flat) == len(set(flat)) and all(assignments[i] is not None for i in flat)
    assert epoch == _take(iter(BucketBatchSampler(assignments, sizes, seed=1)), len(s))
    assert epoch != _take(iter(BucketBatchSampler(assignments, sizes, seed=2)), len(s))
    # Two ranks: disjoint halves of the same global batches, of the same bucket.
    r0, r1 = (_take(iter(BucketBatchSampler(assignments, sizes, 1, r, 2)), 5) for r in (0, 1))
    for a, b in zip(r0, r1):
        assert not set(a) & set(b) and assignments[a[0]] == assignments[b[0]]
    # Resume from a data position, across an epoch boundary.
    stream = _take(iter(s), len(s) + 4)
    assert (
        _take(iter(BucketBatchSampler(assignments, sizes, 1, start=len(s) - 1)), 5)
        == (stream[len(s) - 1 :])
    )


# ---- manifest of real videos ------------------------------------------------------------------


def _counting_video(n, fps, h=48, w=64):
    # Frame i is flat grey 8*i, so the frames a reader picked can be read back from pixels.
    frames = np.stack([np.full((h, w, 3), 8 * i, np.uint8) for i in range(n)])
    return Video(frames, fps)


@pytest.fixture
def manifest(tmp_path):
    _counting_video(24, 16.0).save(tmp_path / "a.mp4")
    _counting_video(20, 8.0, h=64, w=64).save(tmp_path / "b.mp4")
    _counting_video(16, 8.0).save(tmp_path / "c.mp4")
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    rows = [
        {"path": "a.mp4", "caption": "clip a"},
        {"path": "broken.mp4", "caption": "broken"},
        {"path": "b.mp4", "detailed": "clip b in detail", "short": "clip b"},
        {"path": str(tmp_path / "c.mp4"), "caption": "clip c"},
    ]
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_manifest_skips_and_counts_broken_clips(manifest):
    buckets = make_buckets([[9, 32, 48], [9, 32, 32]])
    ds = ManifestClips(manifest / "captions.jsonl", buckets, fps=8.0, seed=0)
    assert len(ds) == 3 and [p for p, _ in ds.skipped] == [str(manifest / "broken.mp4")]
    assert ds.assignments == [0, 1, 0]  # a, c are 4:3 -> 48x32; b is square
    s = ds[0]
    assert s["caption"] == "clip a" and s["video"].shape == (3, 9, 32, 48)
    assert ds[1]["caption"] == "clip b in detail"
    # 16 fps source read at 8 fps: every second source frame.
    grey = ((s["video"][:, :, 16, 24].mean(0) + 1) * 127.5).numpy()
    assert np.allclose(np.diff(grey), 16, atol=3)

    # A clip that breaks after the start is skipped per batch and reported, not raised.
    (manifest / "c.mp4").write_bytes(b"garbage")
    sampler = BucketBatchSampler(ds.assignments, [2, 1], seed=0)
    dl = DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=0)
    batches = _take(iter(dl), 2 * len(sampler))
    skipped = [p for b in batches for p, _ in b["skipped"]]
    assert skipped and set(skipped) == {str(manifest / "c.mp4")}
    for b in batches:
        if b["video"] is not None:
            assert b["video"].shape[0] == len(b["caption"]) == len(b["path"])
            assert str(manifest / "c.mp4") not in b["path"]


def test_manifest_folder_and_bad_lines(tmp_path, manifest):
    (manifest / "a.txt").write_text("caption from a sidecar\n")
    (manifest / "captions.jsonl").unlink()
    ds = ManifestClips(manifest, make_buckets([[9, 32, 48]]), fps=8.0)
    # Every clip goes to its nearest bucket, even square b to the only (3:2) one.
    assert [e.path.name for e in ds.entries] == ["a.mp4", "b.mp4", "c.mp4"]
    assert ds.entries[0].caption == "caption from a sidecar" and ds.entries[1].caption == ""
    assert [p for p, _ in ds.skipped] == [str(manifest / "broken.mp4")]
    # Clips shorter than every bucket are left out at start and listed (a spans 12 frames
    # at 8 fps, c 16, b 20).
    ds = ManifestClips(manifest, make_buckets([[17, 32, 48]]), fps=8.0)
    assert [e.path.name for e in ds.entries] == ["b.mp4"]
    assert sorted(p.rsplit("/", 1)[1] for p, _ in ds.skipped) == ["a.mp4", "broken.mp4", "c.mp4"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"path": "a.mp4", "caption": "ok"}\n{"caption": "no path"}\n')
    from kinetoscope.errors import UserError

    with pytest.raises(UserError, match=r"bad.jsonl:2: a line needs a 'path' key"):
        ManifestClips(bad, make_buckets([[9, 32, 48]]), fps=8.0)


def test_frame_indices_resample_by_time():
    assert frame_indices(24, 16.0, 5, 8.0, 0.0) == [0, 2, 4, 6, 8]
    assert frame_indices(10, 8.0, 5, 16.0, 0.0) == [0, 0, 1, 2, 2]  # upsampling repeats
    assert frame_indices(10, 8.0, 3, 8.0, 2.0) == [9, 9, 9]  # clamped at the end


# ---- latent cache -----------------------------------------------------------------------------


def _encode_video(x):  # [B, 3, T, H, W] -> [B, 4, 1 + (T-1)//4, H/8, W/8]
    z = torch.nn.functional.avg_pool3d(x[:, :, 1:], (4, 8, 8)) if x.shape[2] > 1 else None
    first = torch.nn.functional.avg_pool3d(x[:, :, :1], (1, 8, 8))
    z = first if z is None else torch.cat([first, z], dim=2)
    return torch.cat([z, -z[:, :1]], dim=1)


def _encode_text(texts):  # word-count tokens, padded to the longest in the batch
    L = max(1, max(len(t.split()) for t in texts))
    emb = torch.zeros(len(texts), L, 6)
    mask = torch.zeros(len(texts), L, dtype=torch.bool)
    for b, t in enumerate(texts):
        for i, word in enumerate(t.split()):
            emb[b, i] = torch.tensor([len(word), ord(word[0]), i, b % 2, 1.0, -1.0])
            mask[b, i] = True
    return emb, mask


def test_latent_cache_round_trip(tmp_path):
    world = _world(buckets=make_buckets([[9, 32, 32], [1, 32, 48]]), batch_sizes=[2, 3])
    videos = [j for j in range(20) if world.bucket_of(j) == 0][:2]
    images = [j for j in range(20) if world.bucket_of(j) == 1][:2]
    # 2 + 3 + 2 + 3 samples, cut at 8 by num_samples.
    batches = [world.batch(j) for pair in zip(videos, images) for j in pair]
    out = build_latent_cache(
        iter(batches), tmp_path / "cache", _encode_video, _encode_text, num_samples=8, shard_size=3
    )
    assert sorted(p.name for p in out.glob("shard_*.safetensors")) == [
        "shard_00000.safetensors",
        "shard_00001.safetensors",
        "shard_00002.safetensors",
    ]
    cache = LatentCache(out)
    assert len(cache) == 8
    expect = []
    for b in batches:
        z = _encode_video(b["video"])
        emb, mask = _encode_text(b["caption"])
        expect += [(z[i], emb[i], mask[i], b["caption"][i]) for i in range(len(b["caption"]))]
    for i in range(8):
        item, (z, emb, mask, cap) = cache[i], expect[i]
        assert item["caption"] == cap
        assert torch.equal(item["latent"], z.to(torch.bfloat16))
        assert torch.equal(item["text"], emb.to(torch.bfloat16))
        assert torch.equal(item["mask"], mask)
    null, null_mask = cache.null_text()
    assert null.shape[0] == null_mask.shape[0] and not null_mask.any()

    assignments, sizes = cache.bucket_assignments(token_budget=64)
    assert cache.shapes() == [(4, 3, 4, 4), (4, 1, 4, 6)]
    assert sizes == [64 // (3 * 2 * 2), 64 // (1 * 2 * 3)]
    sampler = BucketBatchSampler(assignments, [2, 2], seed=0)
    dl = DataLoader(cache, batch_sampler=sampler, collate_fn=collate_latents)
    for batch in _take(iter(dl), 3):
        B = len(batch["index"])
        assert batch["latent"].shape[0] == B and batch["mask"].shape == batch["text"].shape[:2]
        for r, i in enumerate(batch["index"]):
            n = int(expect[i][2].sum())
            assert batch["mask"][r].sum() == n and not batch["mask"][r, n:].any()


def test_latent_cache_missing_index_is_clear(tmp_path):
    from kinetoscope.errors import UserError

    with pytest.raises(UserError, match="not a latent cache, or incomplete"):
        LatentCache(tmp_path)
