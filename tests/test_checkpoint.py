"""Checkpoints: exact round trip, keep-last-K, atomic writes that survive a full disk."""

import errno
import random

import numpy as np
import pytest
import torch
import yaml

from kinetoscope.train import checkpoint as ckpt
from kinetoscope.train.checkpoint import (
    CheckpointError,
    latest,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from kinetoscope.train.config import load_config, resolve


def _model():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10))
    m[1].weight = m[0].weight  # tied weights, as an LM head shares its embedding
    return m


def _train_state(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    model(torch.tensor([1, 2, 3])).sum().backward()
    opt.step()
    sched.step()
    return opt, sched


def test_round_trip_restores_weights_optimizer_and_rng(tmp_path):
    model = _model()
    opt, sched = _train_state(model)
    ema = {k: v * 0.5 for k, v in model.state_dict().items()}
    cfg = resolve({}, ["train.steps=9"])
    state = {
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": rng_state(),
        "data": {"batch": 42},
    }
    path = save_checkpoint(tmp_path, 123, {"model": model.state_dict(), "ema": ema}, state, cfg)
    assert path.name == "step_000123"
    assert {p.name for p in path.iterdir()} == {
        "model.safetensors",
        "ema.safetensors",
        "state.pt",
        "config.yaml",
    }
    expect = (random.random(), float(np.random.rand()), torch.rand(3))

    tensors, loaded = load_checkpoint(tmp_path)  # the run folder resolves to its newest
    fresh = _model()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    fresh.load_state_dict(tensors["model"])
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
        assert torch.equal(tensors["ema"][k], ema[k]), k
    assert fresh[1].weight is fresh[0].weight  # loading keeps the tie

    opt2 = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    opt2.load_state_dict(loaded["optimizer"])
    s_old, s_new = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert torch.equal(s_old[0]["exp_avg"], s_new[0]["exp_avg"])
    assert loaded["scheduler"]["last_epoch"] == 1
    assert loaded["step"] == 123 and loaded["data"] == {"batch": 42}

    # Restoring the RNG replays exactly the numbers drawn right after saving.
    set_rng_state(loaded["rng"])
    got = (random.random(), float(np.random.rand()), torch.rand(3))
    assert got[0] == expect[0] and got[1] == expect[1] and torch.equal(got[2], expect[2])

    assert load_config(path / "config.yaml") == cfg


def test_keep_last_k_and_latest(tmp_path):
    w = {"model": {"w": torch.zeros(2)}}
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step, w, {}, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000030", "step_000040"]
    assert latest(tmp_path).name == "step_000040"
    # Resaving a step replaces it whole.
    save_checkpoint(tmp_path, 40, {"model": {"w": torch.ones(2)}}, {}, keep_last=2)
    assert torch.equal(load_checkpoint(tmp_path)[0]["model"]["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000030", "step_000040"]


def test_latest_ignores_and_cleans_temporary_and_incomplete(tmp_path):
    assert latest(tmp_path / "nothing") is None
    save_checkpoint(tmp_path, 5, {"model": {"w": torch.ones(1)}}, {})
    # A write killed midway leaves a temp folder; a folder without state.pt is not complete.
    tmp = tmp_path / ".tmp-step_000009-999"
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(b"partial")
    (tmp_path / "step_000007").mkdir()
    assert latest(tmp_path).name == "step_000005"
    assert not tmp.exists()
    assert load_checkpoint(tmp_path)[1]["step"] == 5


def test_out_of_disk_keeps_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, {"model": {"w": torch.full((3,), 1.0)}}, {"data": 1}, {"a": 1})

    real_save = ckpt.torch.save

    def full_disk(obj, f, *a, **k):  # model.safetensors is already written at this point
        real_save(obj, f, *a, **k)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    with pytest.raises(CheckpointError) as e:
        save_checkpoint(tmp_path, 2, {"model": {"w": torch.full((3,), 2.0)}}, {"data": 2})
    msg = str(e.value)
    assert "no space left on device" in msg and "step_000001 is intact" in msg
    monkeypatch.undo()

    assert [p.name for p in tmp_path.iterdir()] == ["step_000001"]  # no temp folder left
    tensors, state = load_checkpoint(tmp_path)
    assert torch.equal(tensors["model"]["w"], torch.full((3,), 1.0)) and state["data"] == 1
    assert yaml.safe_load((tmp_path / "step_000001" / "config.yaml").read_text()) == {"a": 1}


def test_shared_and_strided_tensors_save(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    group = {"a": base, "b": base, "t": base.t(), "view": base[1]}
    save_checkpoint(tmp_path, 0, {"model": group}, {})
    got = load_checkpoint(tmp_path)[0]["model"]
    for k, v in group.items():
        assert torch.equal(got[k], v), k


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_checkpoint(tmp_path)
    path = save_checkpoint(tmp_path, 3, {"model": {"w": torch.ones(1)}}, {})
    (path / "state.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path)
