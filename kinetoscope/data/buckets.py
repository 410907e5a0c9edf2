"""Buckets: clips of different durations and aspect ratios train at their own sizes in one run.

As in Sora, nothing is padded or squashed to one shape: each clip goes to the bucket
(frames, height, width) nearest its own aspect ratio and duration, every batch holds one
bucket only, and a bucket's batch size comes from a token budget, so a batch of short
landscape clips and a batch of long square ones cost about the same compute and memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Sampler


@dataclass(frozen=True)
class Bucket:
    frames: int
    height: int
    width: int

    @property
    def aspect(self) -> float:
        return self.width / self.height

    @property
    def is_image(self) -> bool:
        return self.frames == 1

    def __str__(self) -> str:
        return f"{self.frames}x{self.height}x{self.width}"


def make_buckets(specs: Sequence[Sequence[int]]) -> list[Bucket]:
    """Returns Buckets from [frames, height, width] triples (as in `data.buckets`)."""
    out = []
    for s in specs:
        if len(s) != 3 or min(s) < 1:
            raise ValueError(f"a bucket is [frames, height, width] of positive ints, got {list(s)}")
        out.append(Bucket(*(int(v) for v in s)))
    if not out:
        raise ValueError("need at least one bucket")
    return out


def latent_tokens(
    bucket: Bucket, time_down: int = 4, space_down: int = 8, patch: tuple[int, int, int] = (1, 2, 2)
) -> int:
    """Returns the number of DiT tokens of a clip of `bucket`'s size.

    The causal VAE keeps frame 0 alone: T frames give 1 + (T-1)//time_down latent frames,
    then each (pt, ph, pw) patch of latents is one token.
    """
    lt = 1 + (bucket.frames - 1) // time_down
    lh, lw = bucket.height // space_down, bucket.width // space_down
    return math.ceil(lt / patch[0]) * math.ceil(lh / patch[1]) * math.ceil(lw / patch[2])


def batch_size_for(
    bucket: Bucket, token_budget: int, max_batch_size: int | None = None, **kw
) -> int:
    """Returns how many clips of `bucket` fit in `token_budget` latent tokens (at least 1)."""
    b = max(1, token_budget // latent_tokens(bucket, **kw))
    return min(b, max_batch_size) if max_batch_size else b


def batch_size_for_latent(
    shape: Sequence[int],
    token_budget: int,
    max_batch_size: int | None = None,
    patch: tuple[int, int, int] = (1, 2, 2),
) -> int:
    """Returns how many latents of `shape` [C, T, H, W] fit in `token_budget` DiT tokens."""
    _, t, h, w = shape
    tokens = math.ceil(t / patch[0]) * math.ceil(h / patch[1]) * math.ceil(w / patch[2])
    b = max(1, token_budget // tokens)
    return min(b, max_batch_size) if max_batch_size else b


def _log_aspect_distance(a: float, b: float) -> float:
    # In log space, 2:1 and 1:2 are equally far from 1:1.
    return abs(math.log(a) - math.log(b))


def assign_bucket(frames: int, height: int, width: int, buckets: Sequence[Bucket]) -> int | None:
    """Returns the index of the bucket for a clip of `frames` (at the target fps) x height x width.

    The nearest aspect ratio first (cropping less), then the longest duration the clip can
    fill, then the largest area. None when the clip is shorter than every bucket of that
    aspect ratio.
    """
    aspect = width / height
    best = min(_log_aspect_distance(aspect, b.aspect) for b in buckets)
    near = [
        i for i, b in enumerate(buckets) if _log_aspect_distance(aspect, b.aspect) <= best + 1e-9
    ]
    fits = [i for i in near if buckets[i].frames <= frames]
    if not fits:
        return None
    return max(fits, key=lambda i: (buckets[i].frames, buckets[i].height * buckets[i].width))


class BucketBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices, each from one bucket, endlessly, deterministic for a seed.

    Each epoch shuffles every bucket's clips and the order of the batches with
    rng(seed, epoch). A global batch holds `batch_sizes[b] * world_size` clips and rank r
    takes the r-th slice, so ranks see disjoint clips of the same bucket at each step.
    Incomplete batches are dropped. `start` skips that many batches (the data position of a
    resumed run).
    """

    def __init__(
        self,
        assignments: Sequence[int | None],
        batch_sizes: Sequence[int],
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.assignments = list(assignments)
        self.batch_sizes = list(batch_sizes)
        self.seed, self.rank, self.world_size, self.start = seed, rank, world_size, start
        self.members = [
            [i for i, a in enumerate(self.assignments) if a == b] for b in range(len(batch_sizes))
        ]
        if len(self) == 0:
            counts = {b: len(m) for b, m in enumerate(self.members)}
            raise ValueError(
                f"no bucket holds a full global batch: clips per bucket {counts}, batch sizes "
                f"{self.batch_sizes} x world_size {world_size}"
            )

    def __len__(self) -> int:
        """Returns the number of batches in one epoch."""
        return sum(
            len(m) // (bs * self.world_size) for m, bs in zip(self.members, self.batch_sizes)
        )

    def epoch(self, epoch: int) -> list[tuple[int, list[int]]]:
        """Returns the epoch's global batches as (bucket, indices) in training order."""
        rng = np.random.default_rng([self.seed, epoch])
        batches = []
        for b, (members, bs) in enumerate(zip(self.members, self.batch_sizes)):
            g = bs * self.world_size
            order = rng.permutation(len(members))
            for k in range(len(members) // g):
                batches.append((b, [members[i] for i in order[k * g : (k + 1) * g]]))
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[list[int]]:
        per_epoch = len(self)
        epoch, skip = divmod(self.start, per_epoch)
        while True:
            for b, indices in self.epoch(epoch)[skip:]:
                bs = self.batch_sizes[b]
                yield indices[self.rank * bs : (self.rank + 1) * bs]
            epoch, skip = epoch + 1, 0
