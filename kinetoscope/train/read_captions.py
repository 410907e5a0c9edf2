"""The `text` stage: teach the byte text encoder to read ShapeWorld captions before the DiT.

Trained from scratch beside the DiT, the byte encoder's features are noise to the DiT at first,
and the DiT learns to shut its text path (its `text_embedding` GELU goes dead) before the encoder
can say anything: three DiT runs ignored their prompts that way. So the recipe first trains the
encoder alone to read each caption's scene back (the world gives the labels: every object's
colour with its shape and with its motion, the environment, time of day and camera), then the
dit stage starts from it (`model.text_path`) and trains it on together with the DiT.

Captions come from the same scene stream as the clips (held-out combinations excluded), nothing
is rendered, and the head is dropped afterwards: only `encoder.*` goes on to the DiT.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from kinetoscope.models.layers import pool_text
from kinetoscope.world.scene import CAMERAS, COLORS, ENVIRONMENTS, MOTIONS, SHAPES, TIMES, Scene

# Multi-label groups: which colours, shapes and motions appear, and which go together (the
# binding the DiT needs: a red ball and a blue cube, not a blue ball and a red cube).
GROUPS = {
    "colours": len(COLORS),
    "shapes": len(SHAPES),
    "motions": len(MOTIONS),
    "colour-shape": len(COLORS) * len(SHAPES),
    "colour-motion": len(COLORS) * len(MOTIONS),
}
MULTI = sum(GROUPS.values())
OFFSET = dict(zip(GROUPS, itertools.accumulate([0, *GROUPS.values()])))  # group -> first label
# The head's logits: the multi-labels, then one class each of environment, time, camera.
SLICES = {
    "environment": slice(MULTI, MULTI + len(ENVIRONMENTS)),
    "time": slice(MULTI + len(ENVIRONMENTS), MULTI + len(ENVIRONMENTS) + len(TIMES)),
    "camera": slice(MULTI + len(ENVIRONMENTS) + len(TIMES), None),
}
OUTPUTS = MULTI + len(ENVIRONMENTS) + len(TIMES) + len(CAMERAS)
# A scene has 1-3 objects, so few labels of a group are true: each positive weighs
# (labels in its group) / 2, about the negatives per positive. Unweighted, "nothing is there"
# won: 400 steps of pairs alone recalled not one pair.
POS_WEIGHT = torch.cat([torch.full((n,), n / 2) for n in GROUPS.values()])


class CaptionReader(nn.Module):
    """A byte text encoder and a linear head reading the scene from its mean- and max-pooled
    output (a colour is a few bytes of a long caption: a mean alone dilutes it)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(2 * encoder.dim, OUTPUTS)
        if not self.head.weight.is_meta:
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        self.encoder.init_weights()
        self.head.reset_parameters()

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Returns logits [B, OUTPUTS] (float32) for byte ids [B, L] and their mask [B, L]."""
        return self.head(pool_text(self.encoder.encode_ids(ids, mask), mask))


def scene_targets(scene: Scene) -> tuple[torch.Tensor, int, int, int]:
    """Returns (multi-labels [MULTI] 0/1, environment, time, camera indices) of a scene."""
    y = torch.zeros(MULTI)
    for o in scene.objects:
        c, s, m = COLORS.index(o.color), SHAPES.index(o.shape), MOTIONS.index(o.motion)
        for group, i in (("colours", c), ("shapes", s), ("motions", m),
                         ("colour-shape", c * len(SHAPES) + s),
                         ("colour-motion", c * len(MOTIONS) + m)):  # fmt: skip
            y[OFFSET[group] + i] = 1
    e, t, cam = (ENVIRONMENTS.index(scene.environment), TIMES.index(scene.time),
                 CAMERAS.index(scene.camera))  # fmt: skip
    return y, e, t, cam


def batch_targets(scenes: list[Scene]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Returns the scenes' multi-labels [B, MULTI] and their environment, time, camera [B] each."""
    multi, *classes = zip(*(scene_targets(s) for s in scenes))
    return torch.stack(multi), [torch.tensor(c) for c in classes]


def caption_batches(ds, batch_size: int, start: int):
    """Yields {caption [B], scene [B]} batches j = start, start+1, ... of a ShapeWorldClips
    stream's scenes (its seed, held-out exclusion and rank), with detailed captions."""
    from kinetoscope.world.captions import caption

    j = start
    while True:
        ks = range(ds.rank * batch_size, (ds.rank + 1) * batch_size)
        drawn = [ds.scene(j, k) for k in ks]
        yield {
            "caption": [caption(s, ds.detail, cs) for s, _, cs in drawn],
            "scene": [s for s, _, _ in drawn],
            "index": j,
        }
        j += 1


def text_loss(forward, tokenize, batch, device) -> torch.Tensor:
    """Returns weighted BCE of the multi-labels + cross-entropy of environment, time, camera.

    `forward` is the CaptionReader (or its DDP wrapper), `tokenize` its encoder's."""
    ids, mask = tokenize(batch["caption"])
    return scene_loss(forward(ids.to(device), mask.to(device)), batch["scene"])


def scene_loss(logits: torch.Tensor, scenes: list[Scene]) -> torch.Tensor:
    """Returns the reading loss of head logits [B, OUTPUTS] for the scenes their captions tell:
    weighted BCE of the multi-labels + cross-entropy of environment, time, camera."""
    multi, classes = batch_targets(scenes)
    logits, dev = logits.float(), logits.device
    loss = F.binary_cross_entropy_with_logits(
        logits[:, :MULTI], multi.to(dev), pos_weight=POS_WEIGHT.to(dev)
    )
    for sl, y in zip(SLICES.values(), classes):
        loss = loss + F.cross_entropy(logits[:, sl], y.to(dev))
    return loss


@torch.no_grad()
def reading_accuracy(model: CaptionReader, batch) -> dict[str, float]:
    """Returns, per label group and for environment, time and camera, the share of captions
    read right (a group: its whole set)."""
    ids, mask = model.encoder.tokenize(batch["caption"])
    logits = model(ids, mask).float()
    multi, classes = batch_targets(batch["scene"])
    said, truth = logits[:, :MULTI] > 0, multi.bool()
    out = {}
    for name, n in GROUPS.items():  # the share of captions whose whole set is read right
        group = slice(OFFSET[name], OFFSET[name] + n)
        out[name] = (said[:, group] == truth[:, group]).all(1)
    for (name, sl), y in zip(SLICES.items(), classes):
        out[name] = logits[:, sl].argmax(1) == y
    return {k: round(v.float().mean().item(), 4) for k, v in out.items()}
