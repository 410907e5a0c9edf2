"""Frame conditions: constructors place known latents, apply() cleans them, random draws."""

import pytest
import torch

from kinetoscope.diffusion.conditioning import (
    KINDS,
    ConditionProbs,
    FrameCondition,
    draw_kinds,
    frame_timesteps,
    random_condition,
)

B, C, T, H, W = 2, 3, 6, 2, 2


def lat(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(B, C, n, H, W, generator=torch.Generator().manual_seed(seed))


def test_constructors_place_known_latents():
    head, tail = lat(2, 1), lat(1, 2)
    cases = {
        "first_frame": (FrameCondition.first_frame(head[:, :, 0], T), [0], head[:, :, :1]),
        "prefix": (FrameCondition.prefix(head, T), [0, 1], head),
        "suffix": (FrameCondition.suffix(head, T), [4, 5], head),
        "connect": (
            FrameCondition.prefix_suffix(head, tail, T),
            [0, 1, 5],
            torch.cat([head, tail], 2),
        ),
        "frames": (FrameCondition.frames(head, [3, -1], T), [3, 5], head),
    }
    for name, (cond, idx, known) in cases.items():
        expect = torch.zeros(B, T, dtype=torch.bool)
        expect[:, idx] = True
        assert torch.equal(cond.mask, expect), name
        assert torch.equal(cond.latents[:, :, idx], known), name
        assert cond.latents.shape == (B, C, T, H, W), name


def test_constructor_errors_name_the_values():
    with pytest.raises(ValueError, match="exceed 6"):
        FrameCondition.prefix_suffix(lat(4), lat(3), T)
    with pytest.raises(ValueError, match=r"\[1, 7\]"):
        FrameCondition.frames(lat(2), [1, 7], T)
    with pytest.raises(ValueError, match="distinct"):
        FrameCondition.frames(lat(2), [1, 1], T)
    with pytest.raises(ValueError, match="does not match"):
        FrameCondition(torch.zeros(B, T + 1, dtype=torch.bool), lat(T))


def test_apply_sets_known_frames_clean_at_t0():
    cond = FrameCondition.prefix_suffix(lat(1, 1), lat(2, 2), T)
    x, t = torch.randn(B, C, T, H, W), torch.full((B, T), 0.7)
    x2, t2 = cond.apply(x, t)
    known = cond.mask[0]
    assert torch.equal(x2[:, :, known], cond.latents[:, :, known])
    assert torch.equal(x2[:, :, ~known], x[:, :, ~known])
    assert torch.equal(t2[:, known], torch.zeros(B, int(known.sum())))
    assert torch.equal(t2[:, ~known], t[:, ~known])
    with pytest.raises(ValueError, match="does not match"):
        cond.apply(x[:, :, :-1], t[:, :-1])


def test_frame_timesteps():
    t = torch.tensor([0.2, 0.9])
    assert torch.equal(frame_timesteps(t, 3), torch.tensor([[0.2] * 3, [0.9] * 3]))
    per_frame = torch.rand(2, 3)
    assert frame_timesteps(per_frame, 3) is per_frame
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        frame_timesteps(torch.rand(2, 4), 3)


def test_random_condition_is_deterministic_by_generator():
    def draw(seed):
        return random_condition(64, 8, torch.Generator().manual_seed(seed))

    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))


def test_draw_kinds_follows_probabilities():
    probs = ConditionProbs(none=1, first_frame=2, prefix=3, suffix=1, connect=2, frames=1)
    n = 20000
    kinds = draw_kinds(n, 8, torch.Generator().manual_seed(0), probs)
    total = 10
    for k, w in zip(KINDS, (1, 2, 3, 1, 2, 1)):
        assert abs(kinds.count(k) / n - w / total) < 0.015, (k, kinds.count(k) / n)


def test_random_masks_match_their_kinds():
    n, T_ = 400, 7
    kinds = draw_kinds(n, T_, torch.Generator().manual_seed(5))
    mask = random_condition(n, T_, torch.Generator().manual_seed(5))  # draws kinds first
    for kind, row in zip(kinds, mask.tolist()):
        known = [i for i, k in enumerate(row) if k]
        if kind == "none":
            assert known == []
            continue
        assert 1 <= len(known) <= T_ - 1, (kind, row)  # something given, something to generate
        if kind == "first_frame":
            assert known == [0]
        elif kind == "prefix":
            assert known == list(range(len(known)))
        elif kind == "suffix":
            assert known == list(range(T_ - len(known), T_))
        elif kind == "connect":
            assert row[0] and row[-1] and not all(row)
            gaps = sum(1 for a, b in zip(row, row[1:]) if a and not b)
            assert gaps == 1, row  # one known run at each end


def test_kinds_that_do_not_fit_are_never_drawn():
    assert set(draw_kinds(200, 1, torch.Generator().manual_seed(0))) == {"none"}
    assert random_condition(50, 1, torch.Generator().manual_seed(0)).sum() == 0
    assert "connect" not in draw_kinds(2000, 2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="-1"):
        draw_kinds(4, 4, probs=ConditionProbs(none=-1))
