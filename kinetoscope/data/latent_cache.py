"""A latent cache: VAE latents and text embeddings computed once, read by every DiT step.

Encoding video with the VAE and text with the encoder costs more than a small DiT step, and
both are frozen in the dit stage, so they are run once over the data and stored as sharded
safetensors: `shard_00000.safetensors` holds per-sample tensors keyed `{i:08d}.latent`
([C, T, H, W]), `{i:08d}.text` ([L, D]) and `{i:08d}.mask` ([L] bool), plus `null.safetensors`
(the "" embedding for text dropout) and `index.json` (shapes, captions, shard of each
sample). index.json is written last and atomically, so a cache without it is incomplete.

The functions take any `encode_video(x [B,3,T,H,W]) -> z` and `encode_text(list[str]) ->
(emb [B,L,D], mask [B,L])` callables, so they do not depend on the model classes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from torch.utils.data import Dataset

from kinetoscope.data.buckets import batch_size_for_latent
from kinetoscope.errors import UserError
from kinetoscope.files import save_tensors

INDEX = "index.json"
NULL = "null.safetensors"


def _shard_name(n: int) -> str:
    return f"shard_{n:05d}.safetensors"


@torch.no_grad()
def build_latent_cache(
    batches: Iterable[dict],
    out_dir: str | Path,
    encode_video: Callable[[torch.Tensor], torch.Tensor],
    encode_text: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]],
    num_samples: int | None = None,
    shard_size: int = 256,
    dtype: torch.dtype = torch.bfloat16,
) -> Path:
    """Returns the folder of a latent cache built from batches {video [B,3,T,H,W], caption}.

    Stops after `num_samples` samples (needed for an endless stream such as ShapeWorld).
    Latents and embeddings are stored in `dtype` (bf16 halves the disk and is what the
    bf16 training step reads anyway); batches with no video (all clips skipped) are passed.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / INDEX).unlink(missing_ok=True)  # the cache is incomplete until the new index lands
    samples, shards, shard = [], [], {}

    def flush():
        if shard:
            name = _shard_name(len(shards))
            save_tensors(shard, out / name)
            shards.append(name)
            shard.clear()

    i = 0
    for batch in batches:
        if batch.get("video") is None:
            continue
        captions = list(batch["caption"])
        z = encode_video(batch["video"])  # [B, C, t, h, w]
        emb, mask = encode_text(captions)  # [B, L, D], [B, L]
        for b in range(z.shape[0]):
            if num_samples is not None and i >= num_samples:
                break
            key = f"{i:08d}"
            shard[f"{key}.latent"] = z[b].detach().to("cpu", dtype).contiguous()
            shard[f"{key}.text"] = emb[b].detach().to("cpu", dtype).contiguous()
            shard[f"{key}.mask"] = mask[b].detach().to("cpu", torch.bool).contiguous()
            samples.append(
                {"shard": len(shards), "shape": list(z.shape[1:]), "caption": captions[b]}
            )
            i += 1
            if len(shard) // 3 >= shard_size:
                flush()
        if num_samples is not None and i >= num_samples:
            break
    flush()
    if not samples:
        raise UserError(f"latent cache {out}: no samples to encode")

    emb, mask = encode_text([""])
    null = {"text": emb[0].detach().to("cpu", dtype).contiguous(), "mask": mask[0].cpu().bool()}
    save_tensors(null, out / NULL)
    index = {"version": 1, "num_samples": len(samples), "shards": shards, "samples": samples}
    tmp = out / f".{INDEX}.tmp"
    tmp.write_text(json.dumps(index))
    os.replace(tmp, out / INDEX)
    return out


class LatentCache(Dataset):
    """Map-style dataset over a latent cache: item i is {latent, text, mask, caption, index}.

    Shards are memory-mapped on first use in each worker, so many workers share the page
    cache instead of each loading every shard.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.index = json.loads((self.path / INDEX).read_text())
        except FileNotFoundError:
            raise UserError(f"{self.path}: no {INDEX}; not a latent cache, or incomplete") from None
        self.samples = self.index["samples"]
        self._open: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def _shard(self, n: int):
        if n not in self._open:
            self._open[n] = safe_open(str(self.path / self.index["shards"][n]), "pt")
        return self._open[n]

    def __getitem__(self, i: int) -> dict:
        s = self.samples[i]
        f, key = self._shard(s["shard"]), f"{i:08d}"
        return {
            "latent": f.get_tensor(f"{key}.latent"),  # [C, T, H, W]
            "text": f.get_tensor(f"{key}.text"),  # [L, D]
            "mask": f.get_tensor(f"{key}.mask"),  # [L]
            "caption": s["caption"],
            "index": i,
        }

    def null_text(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the "" embedding [L, D] and its mask [L], for text dropout."""
        with safe_open(str(self.path / NULL), "pt") as f:
            return f.get_tensor("text"), f.get_tensor("mask")

    def shapes(self) -> list[tuple[int, ...]]:
        """Returns the distinct latent shapes [C, T, H, W], in first-seen order."""
        return list(dict.fromkeys(tuple(s["shape"]) for s in self.samples))

    def bucket_assignments(self, token_budget: int, max_batch_size: int | None = None, **kw):
        """Returns (per-sample bucket index, per-bucket batch size), one bucket per latent shape.

        Feed these to BucketBatchSampler so every batch stacks latents of one shape.
        """
        shapes = self.shapes()
        where = {s: b for b, s in enumerate(shapes)}
        assignments = [where[tuple(s["shape"])] for s in self.samples]
        sizes = [batch_size_for_latent(s, token_budget, max_batch_size, **kw) for s in shapes]
        return assignments, sizes


def collate_latents(samples: list[dict]) -> dict:
    """Returns {latent [B,C,T,H,W], text [B,L,D], mask [B,L], caption, index}, text padded."""
    L = max(s["text"].shape[0] for s in samples)
    D = samples[0]["text"].shape[1]
    text = samples[0]["text"].new_zeros(len(samples), L, D)
    mask = torch.zeros(len(samples), L, dtype=torch.bool)
    for b, s in enumerate(samples):
        n = s["text"].shape[0]
        text[b, :n], mask[b, :n] = s["text"], s["mask"]
    return {
        "latent": torch.stack([s["latent"] for s in samples]),
        "text": text,
        "mask": mask,
        "caption": [s["caption"] for s in samples],
        "index": [s["index"] for s in samples],
    }
