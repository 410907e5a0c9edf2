"""Checkpoints that survive a kill or a full disk: one folder per step, written atomically.

A checkpoint is `run_dir/step_000123/` holding `<name>.safetensors` per tensor group (`model`,
`ema`, ...), `state.pt` (optimizer, scheduler, RNG, data position, step) and `config.yaml`.
It is written into a hidden temporary folder next to it, every file fsynced, then renamed
into place: a reader sees either the whole checkpoint or none of it, and a failed write
(SIGKILL, ENOSPC) leaves the previous checkpoints as they were.

The functions take plain state dicts on the CPU; gathering DDP/FSDP state is the trainer's job.
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file

from kinetoscope.errors import UserError
from kinetoscope.files import save_tensors

STEP_DIR = re.compile(r"^step_(\d+)$")
TMP_PREFIX = ".tmp-"
STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"


class CheckpointError(UserError):
    """A checkpoint could not be written or read; the message says which and why."""


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _safetensors_ready(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Returns CPU, contiguous tensors that share no memory, as safetensors requires.

    Tied weights (an embedding shared with an output head) reach here as two keys over one
    storage; safetensors refuses those, so every storage after the first is cloned.
    """
    out, seen = {}, set()
    for key, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensor group entry {key!r} is {type(t).__name__}, not a Tensor")
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()  # a copy already
        else:
            ptr = t.untyped_storage().data_ptr() if t.numel() else None
            if ptr is not None and ptr in seen:
                t = t.clone()
            elif ptr is not None:
                seen.add(ptr)
        out[key] = t.contiguous()
    return out


def rng_state() -> dict:
    """Returns the python, numpy and torch (CPU and CUDA) RNG states as checkpoint-safe values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restores the RNG states `rng_state` returned."""
    random.setstate(state["python"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Returns (step, folder) of every complete checkpoint in `run_dir`, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for p in run_dir.iterdir():
        m = STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def clean_temporary(run_dir: str | Path) -> list[Path]:
    """Removes the leftovers of interrupted writes; returns the folders removed.

    Only call this while no other process is writing a checkpoint into `run_dir`.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    removed = []
    for p in run_dir.iterdir():
        if p.name.startswith(TMP_PREFIX) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def latest(run_dir: str | Path, clean: bool = True) -> Path | None:
    """Returns the newest complete checkpoint folder in `run_dir`, or None if there is none.

    Temporary folders of interrupted writes are never returned, and removed when `clean`.
    """
    if clean:
        clean_temporary(run_dir)
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    tensors: dict[str, dict[str, torch.Tensor]],
    state: dict,
    config=None,
    keep_last: int | None = 3,
) -> Path:
    """Returns the folder of the checkpoint written atomically for `step`.

    `tensors` maps a group name to a state dict: {"model": ..., "ema": ...} becomes
    model.safetensors and ema.safetensors. `state` (optimizer, scheduler, rng_state(), data
    position, ...) is saved with torch.save and must hold tensors and plain python values.
    `config` is a TrainConfig or a mapping, saved as config.yaml. After the write only the
    newest `keep_last` checkpoints are kept (None keeps all).
    """
    run_dir = Path(run_dir)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}")
    for name in tensors:
        if not re.fullmatch(r"[A-Za-z0-9_]+", name) or name == "state":
            raise ValueError(f"tensor group name must be a plain word other than 'state': {name!r}")
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / step_dir_name(step)
    tmp = run_dir / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        for name, group in tensors.items():
            path = tmp / f"{name}.safetensors"
            save_tensors(_safetensors_ready(group), path, metadata={"step": str(step)})
            _fsync_file(path)
        torch.save({**state, "step": step}, tmp / STATE_FILE)
        _fsync_file(tmp / STATE_FILE)
        if config is not None:
            _write_config(config, tmp / CONFIG_FILE)
            _fsync_file(tmp / CONFIG_FILE)
        _fsync_dir(tmp)
        if final.exists():
            # Re-saving a step (a resumed run that repeats it): swap the old one out first,
            # since rename cannot replace a non-empty folder.
            old = run_dir / f"{TMP_PREFIX}old-{final.name}-{os.getpid()}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(run_dir)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        prev = [p.name for _, p in list_checkpoints(run_dir)]
        why = "no space left on device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        kept = f"; previous checkpoint {prev[-1]} is intact" if prev else ""
        raise CheckpointError(f"could not write checkpoint {final}: {why}{kept}") from e

    if keep_last is not None:
        for _, old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _write_config(config, path: Path) -> None:
    if isinstance(config, dict):
        path.write_text(yaml.safe_dump(config, sort_keys=False))
    else:
        from kinetoscope.train.config import save_config

        save_config(config, path)


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Returns (tensor groups, state) of a checkpoint folder, or of a run folder's newest."""
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        found = latest(path, clean=False) if path.is_dir() else None
        if found is None:
            raise CheckpointError(f"no complete checkpoint in {path}")
        path = found
    tensors = {}
    try:
        for f in sorted(path.glob("*.safetensors")):
            tensors[f.stem] = load_file(str(f), device=str(device))
        # weights_only: a checkpoint is data, never code; rng_state() keeps it loadable so.
        state = torch.load(path / STATE_FILE, map_location=device, weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which, not a pickle traceback
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first}") from e
    return tensors, state
