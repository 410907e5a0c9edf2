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

import torch
import torch.nn.functional as F
from torch import nn

from kinetoscope.world.scene import CAMERAS, COLORS, ENVIRONMENTS, MOTIONS, SHAPES, TIMES, Scene

PAIRS = len(COLORS) * (len(SHAPES) + len(MOTIONS))  # colour-shape and colour-motion pairs
# The head's logits: the multi-label pairs, then one class each of environment, time, camera.
SLICES = {
    "environment": slice(PAIRS, PAIRS + len(ENVIRONMENTS)),
    "time": slice(PAIRS + len(ENVIRONMENTS), PAIRS + len(ENVIRONMENTS) + len(TIMES)),
    "camera": slice(PAIRS + len(ENVIRONMENTS) + len(TIMES), None),
}
OUTPUTS = PAIRS + len(ENVIRONMENTS) + len(TIMES) + len(CAMERAS)


class CaptionReader(nn.Module):
    """A byte text encoder and a linear head reading the scene from its mean-pooled output."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.dim, OUTPUTS)
        if not self.head.weight.is_meta:
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        self.encoder.init_weights()
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Returns logits [B, OUTPUTS] (float32) for byte ids [B, L] and their mask [B, L]."""
        h = self.encoder.encode_ids(ids, mask)  # [B, L, D], zero on padding
        pooled = h.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return self.head(pooled.float())


def scene_targets(scene: Scene) -> tuple[torch.Tensor, int, int, int]:
    """Returns (pairs [PAIRS] 0/1, environment, time, camera indices) of a scene."""
    pairs = torch.zeros(PAIRS)
    ns = len(SHAPES)
    for o in scene.objects:
        c = COLORS.index(o.color)
        pairs[c * ns + SHAPES.index(o.shape)] = 1
        pairs[len(COLORS) * ns + c * len(MOTIONS) + MOTIONS.index(o.motion)] = 1
    e, t, cam = (ENVIRONMENTS.index(scene.environment), TIMES.index(scene.time),
                 CAMERAS.index(scene.camera))  # fmt: skip
    return pairs, e, t, cam


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
    """Returns BCE over the colour pairs + cross-entropy of environment, time and camera.

    `forward` is the CaptionReader (or its DDP wrapper), `tokenize` its encoder's."""
    ids, mask = tokenize(batch["caption"])
    logits = forward(ids.to(device), mask.to(device)).float()
    pairs, *classes = zip(*(scene_targets(s) for s in batch["scene"]))
    loss = F.binary_cross_entropy_with_logits(logits[:, :PAIRS], torch.stack(pairs).to(device))
    for sl, y in zip(SLICES.values(), classes):
        loss = loss + F.cross_entropy(logits[:, sl], torch.tensor(y, device=device))
    return loss


@torch.no_grad()
def reading_accuracy(model: CaptionReader, batch) -> dict[str, float]:
    """Returns the share of captions whose every pair, environment, time, camera is read right."""
    ids, mask = model.encoder.tokenize(batch["caption"])
    logits = model(ids, mask).float()
    pairs, *classes = zip(*(scene_targets(s) for s in batch["scene"]))
    out = {"pairs": ((logits[:, :PAIRS] > 0).float() == torch.stack(pairs)).all(1)}
    for (name, sl), y in zip(SLICES.items(), classes):
        out[name] = logits[:, sl].argmax(1) == torch.tensor(y)
    return {k: round(v.float().mean().item(), 4) for k, v in out.items()}
