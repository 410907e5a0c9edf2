"""Exponential moving average of a model's parameters, sharded like the parameters themselves."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from kinetoscope.train.distributed import full_tensor, like


class EMA:
    """Shadow copies of the trainable parameters; `update` after each optimizer step.

    Under FSDP2 the parameters are DTensors, so the shadows are too: each rank averages only its
    own shard and nothing is communicated until a full state dict is asked for.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = {
            n: p.detach().clone().float() for n, p in model.named_parameters() if p.requires_grad
        }

    def decay_at(self, step: int) -> float:
        """Returns the decay of update `step` (1-based): warmed up as (1 + n) / (10 + n).

        A fixed 0.999 from step 1 keeps 0.999^n of the random initial weights: still 22%
        after 1,500 steps, a short run's whole length. The warm-up forgets them quickly, and
        being a function of the step alone, it resumes exactly.
        """
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        weight = 1.0 - self.decay_at(step)
        for n, p in model.named_parameters():
            if n in self.shadow:
                self.shadow[n].lerp_(p.detach().float(), weight)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Returns the full shadow weights on CPU; every rank must call it (gathers shards)."""
        return {n: full_tensor(t).detach().cpu() for n, t in self.shadow.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        if missing:
            raise ValueError(f"EMA state lacks {len(missing)} parameters, e.g. {missing[:3]}")
        for n, t in self.shadow.items():
            t.copy_(like(state[n].float(), t))

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[None]:
        """Runs the body with the EMA weights in `model`, restoring the trained ones after."""
        params = {n: p for n, p in model.named_parameters() if n in self.shadow}
        backup = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(self.shadow[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(backup[n])
