"""The training loop for both stages: `vae` (the video compression network) and `dit` (the
diffusion transformer and its text encoder, trained jointly on VAE latents).

One process on a CPU and N processes under `torchrun` run the same code; distributed.py wraps
the model from outside. A run resumes exactly: every random draw of a step comes from a
generator seeded with (seed, batch index, rank), the data stream is a pure function of the
batch index, and a checkpoint holds model, EMA, optimizer, schedule, RNG and data position.
"""

from __future__ import annotations

import ctypes
import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kinetoscope.errors import UserError
from kinetoscope.models.layers import pool_text
from kinetoscope.train import distributed as D
from kinetoscope.train.checkpoint import (
    latest,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from kinetoscope.train.config import TrainConfig
from kinetoscope.train.ema import EMA
from kinetoscope.train.objects import latent_coverage, shape_map, shape_map_loss

METRICS = "metrics.jsonl"


# ---- the models of each stage ------------------------------------------------------------


class TextToVideo(nn.Module):
    """The DiT and its byte-level text encoder as one trainable module (one DDP/FSDP unit).

    With `read` (train.read_weight > 0) it also holds the text stage's reading head, which goes
    on reading each caption's scene from the encoder's output; with `shape_block` (train.
    shape_weight > 0) a head reading each token's shape map from that DiT block's output. Runs
    export the DiT and the encoder only, so the heads stay in the run's checkpoints."""

    def __init__(
        self, dit: nn.Module, text: nn.Module, read: bool = False, shape_block: int | None = None
    ) -> None:
        super().__init__()
        self.dit, self.text = dit, text
        if read:
            from kinetoscope.train.read_captions import OUTPUTS

            self.reader = nn.Linear(2 * text.dim, OUTPUTS)
        self.shape_block = shape_block
        if shape_block is not None:
            from kinetoscope.models.layers import LayerNorm32
            from kinetoscope.world.scene import SHAPES

            if not 0 <= shape_block < len(dit.blocks):
                raise UserError(f"train.shape_block must name one of the DiT's "
                                f"{len(dit.blocks)} blocks (0-{len(dit.blocks) - 1}), got "
                                f"{shape_block}")  # fmt: skip
            self.shape_head = nn.Sequential(
                LayerNorm32(dit.cfg.dim, elementwise_affine=False),
                nn.Linear(dit.cfg.dim, 1 + len(SHAPES)),
            )

    def forward(self, x_t, t, ids, ids_mask, read: torch.Tensor | None = None, shapes=False):
        """Returns velocity [B, C, T, H, W]; text goes in as byte ids so it trains with the DiT.
        With `read` ([B] bool, the captions to read) or `shapes`, returns (velocity, heads):
        heads["read"] the reading head's logits [read.sum(), OUTPUTS], heads["shapes"] the
        shape head's logits [B, N, 1 + len(SHAPES)] per token (background first), in one call so
        that DDP and FSDP see every parameter."""
        context = self.text.encode_ids(ids, ids_mask)  # [B, L, D]
        heads = {}
        if shapes:
            v, hidden = self.dit(x_t, t, context, ids_mask, features=self.shape_block)
            heads["shapes"] = self.shape_head(hidden)
        else:
            v = self.dit(x_t, t, context, ids_mask)
        if read is not None:
            heads["read"] = self.reader(pool_text(context[read], ids_mask[read]))
        return (v, heads) if heads else v


def make_model_fn(cfg: TrainConfig):
    """Returns a function building the trainable model of the config's stage, seeded."""
    m = cfg.model

    def make() -> nn.Module:
        torch.manual_seed(cfg.train.seed)  # the same initial weights for any world size
        if m.stage == "vae":
            from kinetoscope.models.vae import VAE

            vae = VAE.from_preset(m.vae).inflate_()
            if m.freeze_encoder:  # latents fixed: the optimizer and the EMA see the decoder only
                for part in (vae.encoder, vae.quant_conv):
                    part.requires_grad_(False)
            return vae
        from kinetoscope.models.dit import DiT
        from kinetoscope.models.text import ByteTextEncoder, byte_text_config

        text = ByteTextEncoder(byte_text_config(m.text))
        if m.stage == "text":
            from kinetoscope.train.read_captions import CaptionReader

            return CaptionReader(text)
        t = cfg.train
        shape_block = t.shape_block if t.shape_weight > 0 else None
        return TextToVideo(DiT(dit_model_config(cfg)), text, t.read_weight > 0, shape_block)

    return make


def token_kwargs(cfg: TrainConfig) -> dict:
    """Returns `latent_tokens`' keyword arguments for a recipe's presets (its VAE's factors and
    its DiT's patch), so clips rendered, read from files or from a latent cache batch alike."""
    from kinetoscope.models.vae import PRESETS

    vae = PRESETS[cfg.model.vae]
    patch = dit_model_config(cfg).patch_size
    return {"time_down": vae.time_factor, "space_down": vae.space_factor, "patch": patch}


def dit_model_config(cfg: TrainConfig):
    """Returns the DiT config of a dit recipe: its preset, sized to the VAE and text encoder."""
    from kinetoscope.models.dit import dit_config
    from kinetoscope.models.text import byte_text_config
    from kinetoscope.models.vae import PRESETS

    z = PRESETS[cfg.model.vae].z_dim
    text_dim = byte_text_config(cfg.model.text).dim
    return dit_config(cfg.model.dit, in_channels=z, out_channels=z, text_dim=text_dim)


def load_frozen_vae(cfg: TrainConfig, device: torch.device) -> nn.Module:
    """Returns the frozen VAE the dit stage encodes with: `model.vae_path`'s EMA weights."""
    from kinetoscope.models.vae import VAE

    vae = VAE.from_preset(cfg.model.vae)
    path = cfg.model.vae_path
    if path is None:
        print("kinetoscope train: model.vae_path is unset; encoding with an untrained VAE")
    else:
        from kinetoscope.pretrained import vae_weights

        _load(vae, vae_weights(path), f"model.vae_path {path}", f"model.vae={cfg.model.vae}")
    return vae.to(device).eval().requires_grad_(False)


def _load(module: nn.Module, state: dict, source: str, preset: str) -> None:
    """load_state_dict, with a one-line UserError when the weights are another architecture."""
    from kinetoscope.pretrained import load_weights

    load_weights(module, state, f"{source}: its weights do not fit this recipe's {preset}")


def _fit_patches(dit: dict, patch_size: tuple, verbose: bool) -> dict:
    """Returns DiT weights with the patch embedding and head resized to the recipe's patch size
    (`resize_patches`) when `model.init_from` has another; other shapes are left to `_load`."""
    from kinetoscope.models.dit import resize_patches

    w = dit.get("patch_embedding.weight")
    if w is None or w.ndim != 5 or tuple(w.shape[2:]) == tuple(patch_size):
        return dit
    if verbose:
        print(f"kinetoscope train: model.init_from has {tuple(w.shape[2:])} patches; its patch "
              f"embedding and head are resized to {tuple(patch_size)}")  # fmt: skip
    return resize_patches(dit, patch_size)


def _fit_depth(dit: dict, num_layers: int, source: str, verbose: bool) -> dict:
    """Returns DiT weights grown to the recipe's depth (`deepen`: the new blocks start as the
    identity) when `model.init_from` has fewer blocks; refuses to drop blocks."""
    from kinetoscope.models.dit import deepen, num_blocks

    old = num_blocks(dit)
    if old == num_layers or old == 0:
        return dit
    if old > num_layers:
        raise UserError(f"{source} has {old} blocks, more than this recipe's {num_layers}: "
                        "a DiT can be deepened, not cut")  # fmt: skip
    if verbose:
        print(f"kinetoscope train: model.init_from has {old} blocks; deepened to {num_layers}, "
              "the new ones starting as the identity")  # fmt: skip
    return deepen(dit, num_layers)


def _fit_decoder(vae: dict, reference: nn.Module, source: str, verbose: bool) -> dict:
    """Returns VAE weights grown to the recipe's wider decoder (`widen_decoder`) when
    `model.init_from`'s decoder is narrower; other shapes are left to `_load`."""
    from kinetoscope.models.vae import widen_decoder

    key = "decoder.conv_out.weight"
    want = reference.state_dict()[key].shape
    if key not in vae or vae[key].shape == want or vae[key].shape[1] > want[1]:
        return vae
    if verbose:
        print(f"kinetoscope train: model.init_from's decoder ends at {vae[key].shape[1]} "
              f"channels; widened to the recipe's {want[1]}, it decodes as before")  # fmt: skip
    try:
        return widen_decoder(vae, reference)
    except ValueError as e:
        raise UserError(f"{source}: its VAE does not widen to this recipe's: {e}") from None


def _add_text_pool(dit: dict, reference: nn.Module, verbose: bool) -> dict:
    """Returns DiT weights with the recipe's fresh pooled-text path added when `model.init_from`
    has none (its last layer is zero, so the model starts as it was)."""
    fresh = {k: v for k, v in reference.state_dict().items() if k.startswith("text_pool.")}
    if not fresh or any(k in dit for k in fresh):
        return dit
    if verbose:
        print("kinetoscope train: model.init_from has no pooled-text path; it starts at zero")
    return {**dit, **fresh}


def load_text_run(path: str | Path) -> dict[str, torch.Tensor]:
    """Returns the byte text encoder's state dict from a text-stage run or checkpoint (EMA)."""
    tensors, _ = load_checkpoint(path)
    state = tensors.get("ema") or tensors["model"]
    out = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    if not out:
        raise UserError(f"{path}: no text encoder weights; is it a model.stage=text run?")
    return out


# ---- data ------------------------------------------------------------------------------


def build_cache(cfg: TrainConfig, num_samples: int, device: str | None = None) -> Path:
    """Returns `data.latent_cache` filled with `num_samples` latents of the config's data.

    The frozen VAE (`model.vae_path`) encodes each clip once, so dit steps that read the cache
    skip the encode, the costliest part of a small model's step. The byte text encoder trains
    with the DiT, so only captions are kept for text (its embeddings would go stale).
    """
    from kinetoscope.data.latent_cache import build_latent_cache

    if cfg.model.stage != "dit" or not cfg.data.latent_cache:
        raise UserError("a latent cache needs model.stage=dit and data.latent_cache=FOLDER")
    if num_samples < 1:
        raise UserError(f"--samples must be >= 1, got {num_samples}")
    info = D.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device(device or "cpu"))
    if info.device.type == "cpu":
        _keep_freed_memory()
    vae = load_frozen_vae(cfg, info.device)
    data = replace(cfg, data=replace(cfg.data, latent_cache=None))  # the source, not the cache

    def encode(x):
        with _autocast(cfg, info.device):
            return encode_whole(vae, x.to(info.device)).float()

    def no_text(captions):  # [B, 1, 1] placeholders: captions are re-encoded every step
        return torch.zeros(len(captions), 1, 1), torch.ones(len(captions), 1, dtype=torch.bool)

    from tqdm import tqdm

    with tqdm(total=num_samples, desc="cache latents", unit="clip") as bar:

        def stream():
            for batch in batches(data, info, 0):
                bar.update(len(batch["caption"]))
                yield batch

        return build_latent_cache(stream(), cfg.data.latent_cache, encode, no_text, num_samples)


def batches(cfg: TrainConfig, info: D.DistInfo, start: int):
    """Yields this rank's batches from batch index `start` (the data position) on."""
    if cfg.model.stage == "text":
        from kinetoscope.data.shapeworld import ShapeWorldClips
        from kinetoscope.train.read_captions import caption_batches

        ds = ShapeWorldClips.from_config(cfg, info.rank, info.world_size, start)
        yield from caption_batches(ds, cfg.data.max_batch_size, start)
        return
    if cfg.model.stage == "dit" and cfg.data.latent_cache:
        from torch.utils.data import DataLoader

        from kinetoscope.data.buckets import BucketBatchSampler
        from kinetoscope.data.latent_cache import LatentCache, collate_latents

        cache = LatentCache(cfg.data.latent_cache)
        d, patch = cfg.data, token_kwargs(cfg)["patch"]  # tokens as the DiT cuts them
        assign, sizes = cache.bucket_assignments(d.tokens_per_batch, d.max_batch_size, patch=patch)
        sampler = BucketBatchSampler(
            assign, sizes, cfg.train.seed, info.rank, info.world_size, start
        )
        loader = DataLoader(
            cache,
            batch_sampler=sampler,
            collate_fn=collate_latents,
            num_workers=cfg.data.num_workers,
        )
        yield from loader
        return
    if cfg.data.source == "manifest":
        from torch.utils.data import DataLoader

        from kinetoscope.data.buckets import BucketBatchSampler, batch_size_for
        from kinetoscope.data.manifest import ManifestClips, collate

        ds = ManifestClips.from_config(cfg)
        d = cfg.data
        kw = token_kwargs(cfg)
        sizes = [batch_size_for(b, d.tokens_per_batch, d.max_batch_size, **kw) for b in ds.buckets]
        try:
            sampler = BucketBatchSampler(
                ds.assignments, sizes, cfg.train.seed, info.rank, info.world_size, start
            )
        except ValueError as e:
            raise UserError(f"data.path {d.path}: {e}") from None
        if info.is_main and ds.skipped:
            print(f"kinetoscope train: {len(ds.skipped)} clips skipped at start, e.g. "
                  f"{ds.skipped[0][1]}")  # fmt: skip
        loader = DataLoader(
            ds, batch_sampler=sampler, collate_fn=collate, num_workers=d.num_workers
        )
        yield from loader
        return
    from kinetoscope.data.shapeworld import ShapeWorldClips, loader

    ds = ShapeWorldClips.from_config(cfg, info.rank, info.world_size, start, token_kwargs(cfg))
    yield from loader(ds, cfg.data.num_workers)


def _readable(stream, skipped: list):
    """Yields (batches read, batch) for each batch that holds video; unreadable clips go to
    `skipped`.

    A long run never stops on one broken file: its clip is dropped from the batch, and a batch
    whose every clip failed is passed over. The count includes the batches passed over, so the
    data position saved with a checkpoint is where the stream really is and a resumed run goes
    on from the next batch.
    """
    read = 0
    for batch in stream:
        read += 1
        skipped.extend(batch.get("skipped", ()))
        if "video" in batch and batch["video"] is None:
            continue
        yield read, batch
        read = 0


# ---- the loss of one micro-batch -----------------------------------------------------------


def step_generator(cfg: TrainConfig, j: int, rank: int) -> torch.Generator:
    """Returns the generator of every random draw for batch j on this rank (exact resume)."""
    seed = np.random.SeedSequence([cfg.train.seed, 3, j, rank]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(seed))


def vae_loss(
    forward, batch, g: torch.Generator, device, cfg: TrainConfig, parts: dict | None = None
) -> torch.Tensor:
    """Returns L1 (+ MSE) reconstruction + a small KL towards N(0, 1) (train.kl_weight) for a
    batch of clips; adds each term (l1, mse, kl) to `parts`."""
    from kinetoscope.models import vae_loss as losses

    x = batch["video"].to(device)  # [B, 3, T, H, W]
    recon, mean, logvar = forward(x, generator=g)
    out = losses.vae_loss(x, recon, mean, logvar, cfg.train.kl_weight, cfg.train.mse_weight)
    _add_parts(parts, {k: out[k] for k in ("l1", "mse", "kl")})
    return out["loss"]


def _add_parts(parts: dict | None, terms: dict) -> None:
    """Adds each loss term's value (a tensor or 0.0) to `parts` (what metrics.jsonl logs)."""
    if parts is None:
        return
    tensors = [v.detach().float() for v in terms.values() if torch.is_tensor(v)]
    values = iter(torch.stack(tensors).tolist() if tensors else [])  # one device sync for all
    for k, v in terms.items():
        parts[k] = parts.get(k, 0.0) + (next(values) if torch.is_tensor(v) else float(v))


@torch.no_grad()
def latent_stats(cfg: TrainConfig, vae_state: dict[str, torch.Tensor], clips: int = 16):
    """Returns per-channel (mean, std) [1, C, 1, 1, 1] of the VAE's posterior means.

    Measured on clips drawn with their own seed (never the training stream), and stored with
    the weights, so the dit stage and the pipeline see unit-scale latents.
    """
    from kinetoscope.world.render import render
    from kinetoscope.world.scene import HELDOUT, sample_scene

    vae = make_model_fn(cfg)()
    vae.load_state_dict(vae_state, strict=False)
    vae.eval()
    rng = np.random.default_rng([cfg.train.seed, 7])
    frames, h, w = max(cfg.data.bucket_list())  # the longest training clips
    x = torch.stack(
        [
            render(sample_scene(rng, exclude=HELDOUT), w, h, frames, cfg.data.fps, i).to_tensor()
            for i in range(clips)
        ]
    )  # [B, 3, T, H, W]
    with _autocast(cfg, torch.device("cpu")):
        mean, _ = vae.encode_dist(x, chunked=False)
    mean = mean.float()
    dims = (0, 2, 3, 4)
    return mean.mean(dims, keepdim=True), mean.std(dims, keepdim=True).clamp_min(1e-6)


def encode_whole(vae, x: torch.Tensor) -> torch.Tensor:
    """Returns normalised posterior-mean latents of x [B,3,T,H,W], the whole clip in one pass.

    Training clips are short, so the chunked path (for long videos) buys nothing here.
    """
    mean, _ = vae.encode_dist(x, chunked=False)
    return (mean - vae.latents_mean) / vae.latents_std


@dataclass
class DiTInputs:
    vae: nn.Module | None  # None when reading a latent cache
    model: TextToVideo  # the plain module (for tokenize)


def dit_loss(
    forward, batch, g: torch.Generator, device, cfg: TrainConfig, io: DiTInputs, parts=None
) -> torch.Tensor:
    """Returns the flow-matching loss of a batch: random t, text dropout, frame conditions; with
    train.read_weight the reading loss, with train.pair_weight the paired clips' term, with
    train.shape_weight the shape map's. Adds each term before its weight to `parts`: flow, and
    pair / read / shape when their weight is on (0 on a step without them)."""
    from kinetoscope.diffusion.conditioning import ConditionProbs, FrameCondition, random_condition
    from kinetoscope.diffusion.flow import (
        error_loss,
        frame_noise,
        sample_t,
        shift_for_latent,
        shift_t,
        velocity_error,
    )

    def latents(videos: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return encode_whole(io.vae, videos.to(device)).float()

    x0 = batch["latent"].to(device).float() if "latent" in batch else latents(batch["video"])
    b, _, t_lat, h, w = x0.shape  # [B, C, T, H, W]
    captions = list(batch["caption"])
    drop = torch.rand(b, generator=g) < cfg.train.text_dropout  # CFG: learn the "" prompt
    captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
    shift = shift_for_latent(t_lat, h, w, io.model.dit.cfg.patch_size, cfg.train.shift)
    t = shift_t(sample_t(b, g), shift).to(device)
    probs = ConditionProbs(**{k: cfg.train.conditions.get(k, 0.0) for k in _kinds()})
    known = random_condition(b, t_lat, g, probs).to(device)  # [B, T] True = given clean
    noise = frame_noise(x0.shape, g, cfg.train.noise_corr).to(device)

    def shares(masks: torch.Tensor) -> torch.Tensor:  # uint8 [B, S, T, H, W] -> 0..1 floats
        return masks.to(device).float() / 255

    def cover_of(shares: torch.Tensor) -> torch.Tensor:  # all shapes' coverage on the latents
        return latent_coverage(shares.amax(1), x0.shape[2:])

    weight = cover = None
    per_shape = shares(batch["coverage"]) if "coverage" in batch else None
    if cfg.train.object_weight or cfg.train.pair_weight:
        cover = cover_of(per_shape)
    if cfg.train.object_weight:
        weight = 1 + cfg.train.object_weight * cover
    # Pairs: each clip whose caption was kept and its twin (one word changed) are averaged,
    # and the average goes through the model twice more, under each caption, with the clip's
    # noise, t (moved into [pair_t_min, 1]) and given frames: where the object is shows, not
    # which of the two it is.
    pair = batch.get("pair") if cfg.train.pair_weight else None
    rows = [n for n, i in enumerate(pair["index"]) if not drop[i]] if pair else []
    pick = torch.tensor([pair["index"][n] for n in rows], dtype=torch.long, device=device)
    if rows:
        ones, twins = x0[pick], latents(pair["video"][rows])
        both = torch.maximum(cover[pick], cover_of(shares(pair["coverage"][rows])))
        captions += [captions[i] for i in pick.tolist()] + [pair["caption"][n] for n in rows]
        mid = (ones + twins) / 2
        x0, noise = torch.cat([x0, mid, mid]), torch.cat([noise, noise[pick], noise[pick]])
        t_pair = cfg.train.pair_t_min + (1 - cfg.train.pair_t_min) * t[pick]
        t, known = torch.cat([t, t_pair, t_pair]), torch.cat([known, known[pick], known[pick]])
    ids, ids_mask = io.model.text.tokenize(captions)
    model, heads = forward, {}
    read_w, shape_w = cfg.train.read_weight, cfg.train.shape_weight
    read = None
    if read_w and not drop.all():  # the head reads the scenes of the captions kept
        read = torch.cat([~drop, torch.zeros(2 * len(rows), dtype=torch.bool)]).to(device)
    if read is not None or shape_w:

        def model(*args):
            v, out = forward(*args, read=read, shapes=shape_w > 0)
            heads.update(out)
            return v

    err, unknown = velocity_error(model, x0, t, noise, ids, ids_mask, FrameCondition(known, x0))
    # Each term the config turns on is logged before its weight, 0 on a step without it, so
    # every rank logs the same keys.
    weights = {"pair": cfg.train.pair_weight, "read": read_w, "shape": shape_w}
    terms = {"flow": error_loss(err[:b], unknown[:b], cfg.train.temporal_weight, weight)}
    terms |= {k: 0.0 for k, w in weights.items() if w}
    if rows:  # each caption's error against its own clip is err + own - mid; their difference
        n = len(rows)  # (the noise both share cancels) is what the words alone must tell apart
        gap = err[b : b + n] - err[b + n :] + (ones - twins)
        terms["pair"] = error_loss(gap, unknown[b : b + n], 0, both)
    if "read" in heads:
        from kinetoscope.train.read_captions import scene_loss
        from kinetoscope.world.scene import Scene

        scenes = [Scene.from_dict(s) for s, d in zip(batch["scene"], drop.tolist()) if not d]
        terms["read"] = scene_loss(heads["read"], scenes)
    if shape_w:
        grid = [n // p for n, p in zip(x0.shape[2:], io.model.dit.cfg.patch_size)]
        target = shape_map(per_shape, tuple(grid))  # [B, 1 + S, t, h, w]
        terms["shape"] = shape_map_loss(heads["shapes"][:b], target, unknown[:b])
    if len(terms) > 1:
        _add_parts(parts, terms)
    loss = terms["flow"]
    for k, w in weights.items():
        if w:
            loss = loss + w * terms[k]
    return loss


def _kinds() -> tuple[str, ...]:
    from kinetoscope.diffusion.conditioning import KINDS

    return KINDS


# ---- schedule, metrics ---------------------------------------------------------------------


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Returns the learning rate of optimizer step `step`: linear warmup, then cosine."""
    o = cfg.optim
    if step < o.warmup:
        return o.lr * (step + 1) / o.warmup
    if not o.cosine:
        return o.lr
    progress = (step - o.warmup) / max(1, cfg.train.steps - o.warmup)
    return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Returns the metrics.jsonl records of a run."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _truncate_metrics(run_dir: Path, step: int) -> None:
    """Drops records past `step`: a killed run logged steps its checkpoint does not hold."""
    kept = [r for r in read_metrics(run_dir) if r["step"] <= step]
    (run_dir / METRICS).write_text("".join(json.dumps(r) + "\n" for r in kept))


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        return None
    return SummaryWriter(str(run_dir / "tb"))


# ---- samples next to checkpoints -------------------------------------------------------------


@torch.no_grad()
def write_samples(cfg, model_fn, weights, batch, vae, out: Path, device) -> None:
    """Writes a sample video with the EMA weights (dit) or reconstructions (vae) to `out`."""
    from kinetoscope.video import Video

    model = model_fn()
    model.load_state_dict(weights)
    model.to(device).eval()
    ac = _autocast(cfg, device)
    if cfg.model.stage == "text":  # how well it reads captions of scenes it has not seen
        from kinetoscope.data.shapeworld import ShapeWorldClips
        from kinetoscope.train.read_captions import caption_batches, reading_accuracy

        fresh = ShapeWorldClips.from_config(cfg)
        fresh.seed = cfg.train.seed + 1  # another scene stream than training's
        with ac:
            acc = reading_accuracy(model, next(caption_batches(fresh, 256, 0)))
        (out / "accuracy.json").write_text(json.dumps(acc) + "\n")
        return
    if cfg.model.stage == "vae":
        x = batch["video"][:2].to(device)
        with ac:
            recon = model.decode(encode_whole(model, x), chunked=False).float()
        both = torch.cat([x, recon], dim=-1)  # input | reconstruction, side by side
        for i in range(both.shape[0]):
            Video.from_tensor(both[i].cpu(), fps=cfg.data.fps).save(out / f"recon_{i}.gif")
        return
    from kinetoscope.diffusion.flow import frame_noise
    from kinetoscope.diffusion.sampling import sample

    caption = batch["caption"][:1]
    ids, mask = model.text.tokenize(caption)
    null_ids, null_mask = model.text.tokenize([""])
    if "latent" in batch:
        shape = batch["latent"][:1].shape
    else:
        f, h, w = batch["video"].shape[2:]
        tf, sf = vae.cfg.time_factor, vae.cfg.space_factor
        shape = (1, model.dit.cfg.in_channels, 1 + (f - 1) // tf, h // sf, w // sf)
    g = torch.Generator().manual_seed(cfg.train.seed)
    noise = frame_noise(shape, g, cfg.train.noise_corr).to(device)
    with ac:
        ctx, nctx = model.text.encode_ids(ids, mask), model.text.encode_ids(null_ids, null_mask)
        z = sample(model.dit, noise, ctx, mask, nctx, null_mask, steps=10, guidance=3.0,
                   progress=False)  # fmt: skip
        if vae is not None:
            x = vae.decode(z.to(torch.float32), chunked=False).float()
            Video.from_tensor(x[0].cpu(), fps=cfg.data.fps).save(out / "sample.gif")
    (out / "sample.txt").write_text(caption[0] + "\n")


def _autocast(cfg: TrainConfig, device: torch.device):
    if not cfg.train.bf16:
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


# ---- the loop ------------------------------------------------------------------------------


def _keep_freed_memory() -> None:
    """Tells glibc's malloc to keep freed memory for the next step. By default a tensor over
    32 MB is mmap'd and handed back to the kernel when freed, so every step faults in and
    zeroes its activations afresh: a tiny-wide VAE step on a 2-core CPU took 5.0 s that way,
    a third of it in the kernel, against 2.5 s with this. Does nothing off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-4, 0)  # M_MMAP_MAX: never mmap, take all memory from the heap
    libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD: keep up to 2 GiB free at the heap's top


def train(cfg: TrainConfig, resume: bool = False, device: str | None = None) -> Path:
    """Trains the config's stage; returns the run folder (checkpoints, metrics.jsonl, samples)."""
    info = D.init_distributed(device)
    if info.device.type == "cpu":
        _keep_freed_memory()
    run = Path(cfg.train.out)
    try:
        return _train(cfg, resume, info, run)
    finally:
        D.destroy_distributed()


def _train(cfg: TrainConfig, resume: bool, info: D.DistInfo, run: Path) -> Path:
    t, o, dev = cfg.train, cfg.optim, info.device
    ckpt = latest(run, clean=info.is_main) if resume else None
    if not resume and latest(run, clean=False) is not None:
        raise UserError(f"{run} already holds checkpoints: pass --resume, or set train.out")
    if resume and ckpt is None and info.is_main:
        print(f"kinetoscope train: no checkpoint in {run}; starting from step 0")
    tensors, state = load_checkpoint(ckpt) if ckpt else ({}, {})
    make = make_model_fn(cfg)
    reference = None
    m = cfg.model
    if m.stage == "dit" and m.text_path and not ckpt:  # start from an encoder that reads
        reference = make()
        _load(reference.text, load_text_run(m.text_path), f"model.text_path {m.text_path}",
              f"model.text={m.text}")  # fmt: skip
    if m.stage == "vae" and m.init_from and not ckpt:  # fine-tune a trained VAE
        from kinetoscope.pretrained import vae_weights

        reference = make()
        source = f"model.init_from {m.init_from}"
        vae = _fit_decoder(vae_weights(m.init_from), reference, source, info.is_main)
        _load(reference, vae, source, f"model.vae={m.vae}")
    if m.stage == "dit" and m.init_from and not ckpt:  # fine-tune a trained model
        from kinetoscope.pretrained import dit_text_weights

        reference = make()
        dit, text = dit_text_weights(m.init_from)
        source = f"model.init_from {m.init_from}"
        dit = _fit_patches(dit, reference.dit.cfg.patch_size, info.is_main)
        dit = _fit_depth(dit, reference.dit.cfg.num_layers, source, info.is_main)
        dit = _add_text_pool(dit, reference.dit, info.is_main)
        _load(reference.dit, dit, source, f"model.dit={m.dit}")
        _load(reference.text, text, source, f"model.text={m.text}")
    model, forward = D.build_parallel(
        make, info, cfg.dist.mode, t.grad_checkpoint, t.compile, tensors.get("model"), reference
    )
    decay, no_decay = [], []  # no weight decay on gains, biases and embeddings' norms
    for p in filter(lambda p: p.requires_grad, model.parameters()):
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay}]
    opt = torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, weight_decay=0.0)
    ema = EMA(model, t.ema_decay) if t.ema_decay > 0 else None
    start, position = 0, 0
    if ckpt:
        D.load_optimizer_state(model, opt, state["optimizer"])
        if ema is not None and "ema" in tensors:
            ema.load_state_dict(tensors["ema"])
        set_rng_state(state["rng"])
        start, position = state["step"], state["data_position"]
        if info.is_main:
            _truncate_metrics(run, start)
            print(f"kinetoscope train: resumed from {ckpt} (step {start})")
    if start >= t.steps:
        return run

    # The dit stage encodes with the frozen VAE, or (from a latent cache) decodes its samples.
    m = cfg.model
    vae = (
        load_frozen_vae(cfg, dev)
        if m.stage == "dit" and (not cfg.data.latent_cache or m.vae_path)
        else None
    )
    parts: dict[str, float] = {}  # the step's loss terms, where the loss has more than one
    if cfg.model.stage == "vae":
        loss_of = lambda batch, g: vae_loss(forward, batch, g, dev, cfg, parts)
    elif cfg.model.stage == "text":
        from kinetoscope.train.read_captions import text_loss

        loss_of = lambda batch, g: text_loss(forward, model.encoder.tokenize, batch, dev)
    else:
        io = DiTInputs(vae, model)
        loss_of = lambda batch, g: dit_loss(forward, batch, g, dev, cfg, io, parts)

    run.mkdir(parents=True, exist_ok=True)
    writer = _tensorboard(run) if info.is_main else None
    bar = None
    if info.is_main:
        from tqdm import tqdm

        bar = tqdm(total=t.steps, initial=start, desc=f"train {cfg.model.stage}", unit="step")
    skipped: list[tuple[str, str]] = []  # clips that failed to decode mid-run (real videos)
    data = _readable(batches(cfg, info, position), skipped)
    t0 = time.perf_counter()
    model.train()
    stop = t.stop_at or t.steps
    for step in range(start, stop):
        lr = lr_at(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr
        total = 0.0
        parts.clear()
        for micro in range(o.grad_accum):
            read, batch = next(data)
            position += read - 1  # batches passed over (every clip unreadable)
            g = step_generator(cfg, position, info.rank)
            position += 1
            with D.no_grad_sync(forward, micro == o.grad_accum - 1), _autocast(cfg, dev):
                loss = loss_of(batch, g) / o.grad_accum
            loss.backward()
            total += loss.item()
        norm = nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip or float("inf"))
        opt.step()
        opt.zero_grad(set_to_none=True)
        done = step + 1
        if ema is not None:
            ema.update(model, done)

        loss_mean = D.all_mean(total, info)
        terms = {k: D.all_mean(v / o.grad_accum, info) for k, v in parts.items()}
        if info.is_main:
            rec = {"step": done, "loss": loss_mean, "lr": lr,
                   "grad_norm": float(D.full_tensor(norm)), "position": position,
                   "time": round(time.perf_counter() - t0, 3)}  # fmt: skip
            rec |= {f"loss_{k}": v for k, v in terms.items()}
            with open(run / METRICS, "a") as f:
                f.write(json.dumps(rec) + "\n")
            if writer is not None:
                writer.add_scalar("loss", loss_mean, done)
                writer.add_scalar("lr", lr, done)
                for k, v in terms.items():
                    writer.add_scalar(f"loss_{k}", v, done)
            bar.update(1)
            if done % t.log_every == 0 or done == t.steps:
                bar.set_postfix(loss=f"{loss_mean:.4f}", lr=f"{lr:.2e}")
        if not math.isfinite(loss_mean):
            raise UserError(f"loss is {loss_mean} at step {done}; lower optim.lr or check data")

        weights = None  # full weights, EMA over raw (a frozen part has no EMA)
        if done % t.ckpt_every == 0 or done == stop:
            weights = _save(cfg, info, run, done, model, opt, ema, position)
        if done % t.sample_every == 0 or done == stop:
            if weights is None:  # gathered once a step, not again for the samples
                weights = D.model_state(model) | (ema.state_dict() if ema is not None else {})
            if info.is_main:
                out = run / f"samples_{done:06d}"
                out.mkdir(exist_ok=True)
                write_samples(cfg, make, weights, batch, vae, out, dev)
            D.barrier()
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()
    if skipped and info.is_main:
        print(f"kinetoscope train: {len(skipped)} unreadable clips skipped, e.g. {skipped[0][1]}")
    D.barrier()  # every rank leaves together, so none tears down gloo under a busy peer
    return run


def _save(cfg, info, run, step, model, opt, ema, position) -> dict:
    """Gathers full state on every rank, writes on rank 0; stops every rank if the write fails.
    Returns the full weights gathered, EMA over raw."""
    tensors = {"model": D.model_state(model)}
    if ema is not None:
        tensors["ema"] = ema.state_dict()
    state = {
        "optimizer": D.optimizer_state(model, opt),
        "scheduler": {"step": step, "lr": lr_at(cfg, step)},  # lr is a pure function of step
        "rng": rng_state(),
        "data_position": position,
        "world_size": info.world_size,
    }
    error = None
    if info.is_main:
        if cfg.model.stage == "vae":  # store the latent normalisation with the weights
            raw = tensors["model"]  # a frozen encoder keeps the normalisation it came with
            stats = (
                (raw["latents_mean"], raw["latents_std"])
                if cfg.model.freeze_encoder
                else latent_stats(cfg, tensors.get("ema", raw))
            )
            for group in tensors.values():
                group["latents_mean"], group["latents_std"] = stats
        try:
            save_checkpoint(run, step, tensors, state, config=cfg, keep_last=cfg.train.keep_last)
        except UserError as e:  # out of disk: the previous checkpoint is intact
            error = str(e)
    error = D.broadcast_object(error, info)
    if error:
        raise UserError(f"{error}; training stopped at step {step}")
    return {**tensors["model"], **tensors.get("ema", {})}
