"""ShapeWorld clips rendered on the fly, in DataLoader workers, as an endless stream of batches.

Every sample is a pure function of (seed, batch index j, position k in the global batch):
its bucket, scene, render seed and caption come from rngs seeded with those numbers alone.
So the stream is the same for any number of workers and ranks, and a run resumes exactly
from a data position (the index of the next batch). Worker w of W renders batches
j = start + w, start + w + W, ...; the DataLoader takes them from the workers in turn, so
the order it yields equals the single-process order. Rank r of R takes samples
k in [r*B, (r+1)*B) of each global batch of R*B, so 2 ranks with B each see exactly the
samples 1 process sees with 2B.

Joint image + video training: a share of the batches are 1-frame images (an image is a
1-frame video to the causal VAE); each batch holds one bucket, so shapes never mix.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from kinetoscope.data.buckets import Bucket, batch_size_for, make_buckets
from kinetoscope.world.scene import HELDOUT, Scene, sample_scene, swap

# Tags that keep the bucket draw and the sample draws on unrelated random streams.
_BUCKET_STREAM, _SAMPLE_STREAM, _PAIR_STREAM = 1, 2, 3


class ShapeWorldClips(IterableDataset):
    """Yields batches {video [B,3,T,H,W] in [-1,1], caption [B], scene [B], index j, bucket}, and
    with `coverage` also coverage [B,S,T,H,W]: each shape's share of each pixel, 0..255 (uint8);
    with `pair_keys` also pair: the one-object clips rendered again, the same in all but one of
    those object attributes (`scene.swap`; the same render and caption seeds), with captions.

    `batch_sizes[b]` is the per-rank batch size of bucket b. `image_share` is the share of
    batches drawn from the 1-frame buckets (images); the video buckets share the rest.
    `simple_share` is the share of samples with one object under a static camera.
    """

    def __init__(
        self,
        buckets: Sequence[Bucket],
        batch_sizes: Sequence[int],
        fps: float = 8.0,
        image_share: float = 0.25,
        seed: int = 0,
        exclude_heldout: bool = True,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
        detail: str = "detailed",
        simple_share: float = 0.0,
        coverage: bool = False,
        pair_keys: Sequence[str] = (),
    ):
        super().__init__()
        if len(buckets) != len(batch_sizes):
            raise ValueError(f"{len(buckets)} buckets but {len(batch_sizes)} batch sizes")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if not 0.0 <= image_share <= 1.0:
            raise ValueError(f"image_share must be in [0, 1], got {image_share}")
        if not 0.0 <= simple_share <= 1.0:
            raise ValueError(f"simple_share must be in [0, 1], got {simple_share}")
        self.buckets, self.batch_sizes = list(buckets), list(batch_sizes)
        self.images = [i for i, b in enumerate(self.buckets) if b.is_image]
        self.videos = [i for i, b in enumerate(self.buckets) if not b.is_image]
        self.fps, self.image_share, self.seed = fps, image_share, seed
        self.exclude = HELDOUT if exclude_heldout else ()
        self.rank, self.world_size, self.start, self.detail = rank, world_size, start, detail
        self.simple_share, self.coverage = simple_share, coverage
        self.pair_keys = tuple(pair_keys)

    @classmethod
    def from_config(cls, cfg, rank: int = 0, world_size: int = 1, start: int = 0, tokens=None):
        """Returns the dataset a TrainConfig describes, for one rank, from batch `start`.

        `tokens`: `latent_tokens`' keyword arguments for the recipe's presets (default 8x VAE,
        2x2 patches), which turn `data.tokens_per_batch` into each bucket's batch size."""
        d, t = cfg.data, cfg.train
        buckets = make_buckets(d.bucket_list())
        kw = tokens or {}
        sizes = [batch_size_for(b, d.tokens_per_batch, d.max_batch_size, **kw) for b in buckets]
        return cls(
            buckets,
            sizes,
            fps=d.fps,
            image_share=d.image_share,
            seed=cfg.train.seed,
            exclude_heldout=d.exclude_heldout,
            rank=rank,
            world_size=world_size,
            start=start,
            simple_share=d.simple_share,
            # only the object-weighted, paired and shape-map losses read these
            coverage=any(w > 0 for w in (t.object_weight, t.pair_weight, t.shape_weight)),
            pair_keys=cfg.train.pair_keys if cfg.train.pair_weight > 0 else (),
        )

    def bucket_of(self, j: int) -> int:
        """Returns the bucket index of global batch `j`."""
        rng = np.random.default_rng([self.seed, _BUCKET_STREAM, j])
        use_image = rng.random() < self.image_share
        pool = (self.images if use_image else self.videos) or self.images or self.videos
        return pool[int(rng.integers(len(pool)))]

    def scene(self, j: int, k: int) -> tuple[Scene, int, int]:
        """Returns (scene, render seed, caption seed) of sample k of global batch j."""
        rng = np.random.default_rng([self.seed, _SAMPLE_STREAM, j, k])
        if self.simple_share and rng.random() < self.simple_share:  # (no draw at 0: same stream)
            scene = sample_scene(rng, exclude=self.exclude, num_objects=1)
            scene.camera = "static"
        else:
            scene = sample_scene(rng, exclude=self.exclude)
        render_seed, caption_seed = (int(s) for s in rng.integers(0, 2**31, size=2))
        return scene, render_seed, caption_seed

    def sample(self, j: int, k: int) -> dict:
        """Returns sample k of global batch j: {video [3,T,H,W] in [-1,1], caption, scene}, with
        `coverage` also coverage [S,T,H,W] uint8 (a map per shape), with `pair_keys` also pair:
        the same clip (render and caption seeds) after one of those attributes is changed, or
        None."""
        b = self.buckets[self.bucket_of(j)]
        scene, render_seed, caption_seed = self.scene(j, k)
        out = self._clip(scene, b, render_seed, caption_seed)
        out["scene"] = scene.to_dict()
        if self.pair_keys:
            other = self.paired_scene(scene, j, k)
            pair = None if other is None else self._clip(other, b, render_seed, caption_seed)
            out["pair"] = pair
        return out

    def _clip(self, scene: Scene, b: Bucket, render_seed: int, caption_seed: int) -> dict:
        from kinetoscope.world.captions import caption
        from kinetoscope.world.render import render

        video = render(
            scene, b.width, b.height, b.frames, self.fps, render_seed, coverage=self.coverage
        )
        out = {}
        if self.coverage:
            video, cover = video
            out["coverage"] = torch.from_numpy(np.rint(cover * 255).astype(np.uint8))
        out["video"] = torch.from_numpy(video.frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0
        out["caption"] = caption(scene, self.detail, caption_seed)
        return out

    def paired_scene(self, scene: Scene, j: int, k: int) -> Scene | None:
        """Returns `scene` with one of `pair_keys` changed (`scene.swap`), or None when the
        scene has more than one object or no other value is allowed."""
        if len(scene.objects) != 1:  # which object a word belongs to would be ambiguous
            return None
        rng = np.random.default_rng([self.seed, _PAIR_STREAM, j, k])
        return swap(scene, str(rng.choice(self.pair_keys)), rng, self.exclude)

    def batch(self, j: int) -> dict:
        """Returns this rank's part of global batch j, collated; with `pair_keys`, pair is
        {index: the samples that have one, video, coverage, caption} or None."""
        b = self.bucket_of(j)
        n = self.batch_sizes[b]
        samples = [self.sample(j, k) for k in range(self.rank * n, (self.rank + 1) * n)]
        out = collate(samples, ("scene",))
        out["index"] = j
        out["bucket"] = (self.buckets[b].frames, self.buckets[b].height, self.buckets[b].width)
        if self.pair_keys:
            have = [i for i, s in enumerate(samples) if s["pair"] is not None]
            out["pair"] = collate([samples[i]["pair"] for i in have]) if have else None
            if have:
                out["pair"]["index"] = have
        return out

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for j in itertools.count(self.start + worker, workers):
            yield self.batch(j)


def collate(samples: list[dict], keep: tuple[str, ...] = ()) -> dict:
    """Returns the samples' video (and coverage) stacked, captions (and `keep`) as lists."""
    out = {"video": torch.stack([s["video"] for s in samples])}  # [B, 3, T, H, W]
    if "coverage" in samples[0]:
        out["coverage"] = torch.stack([s["coverage"] for s in samples])  # [B, S, T, H, W]
    for key in ("caption", *keep):
        out[key] = [s[key] for s in samples]
    return out


def loader(dataset: ShapeWorldClips, num_workers: int = 0, prefetch: int = 2) -> DataLoader:
    """Returns a DataLoader over the dataset's batches, in the same order for any num_workers."""
    extra = dict(prefetch_factor=prefetch, persistent_workers=True) if num_workers else {}
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, **extra)
