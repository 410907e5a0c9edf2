"""Parallelism applied to a plain model from outside: DDP or FSDP2, activation checkpointing,
torch.compile, meta-device construction, and full state dicts for saving and resuming.

The model code never imports torch.distributed; everything here works on any `nn.Module` whose
repeated blocks live in `nn.ModuleList`s (a DiT's `blocks`, a VAE's down/up stages). The same
functions run with one process (no process group) and under `torchrun`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor, distribute_tensor

STRATEGIES = ("none", "ddp", "fsdp")
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


@dataclass
class DistInfo:
    """Where this process sits: rank, world size and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Returns this process's DistInfo, joining the process group when launched by torchrun.

    gloo on CPU, nccl on CUDA. Without torchrun's environment (RANK/WORLD_SIZE) this is a
    single process and no process group is created.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def destroy_distributed() -> None:
    """Leaves the process group, if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_mean(x: float, info: DistInfo) -> float:
    """Returns the mean of a scalar over all ranks (the scalar itself with one process)."""
    if not info.enabled:
        return float(x)
    t = torch.tensor([float(x)], dtype=torch.float64)
    if info.device.type == "cuda":
        t = t.to(info.device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def broadcast_object(obj, info: DistInfo):
    """Returns rank 0's `obj` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _blocks(model: nn.Module) -> list[nn.Module]:
    """Returns the repeated blocks: the children of every outermost nn.ModuleList."""
    lists: list[str] = []
    found: list[nn.Module] = []
    for name, mod in model.named_modules():
        # A list nested inside a block belongs to that block's unit, not a unit of its own.
        if isinstance(mod, nn.ModuleList) and not any(name.startswith(p + ".") for p in lists):
            lists.append(name)
            found.extend(mod)
    return found


def build_parallel(
    make_model: Callable[[], nn.Module],
    info: DistInfo,
    strategy: str = "none",
    activation_checkpointing: bool = False,
    compile: bool = False,
    init_state: dict[str, torch.Tensor] | None = None,
    reference: nn.Module | None = None,
) -> tuple[nn.Module, nn.Module]:
    """Returns (model, forward_module): the plain model (names, state dicts, EMA) and the module
    to call in training (the DDP wrapper, or the model itself for FSDP2 and single process).

    The model is built on `meta` (no memory), wrapped per block (activation checkpointing, then
    torch.compile, then `fully_shard` per block and at the root), then `to_empty` on the device
    and filled from `init_state`, a full state dict (a fresh model's or a checkpoint's).
    Non-persistent buffers (RoPE tables and the like) are not in state dicts, so they are
    copied from `reference`, a model built normally; it also supplies `init_state` when None.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"parallel strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not info.enabled:
        strategy = "none"  # one process: nothing to shard or all-reduce; state dicts are full
    if reference is None:
        reference = make_model()
    if init_state is None:
        init_state = reference.state_dict()
    with torch.device("meta"):
        model = make_model()
    blocks = _blocks(model)
    if activation_checkpointing:
        from torch.distributed._composable import checkpoint

        for block in blocks:
            checkpoint(block)  # composable: parameter names stay unchanged
    if compile:
        for block in blocks:
            block.compile()
    if strategy != "none":  # FSDP shards flat storage, DDP buckets flat grads: no channels-last
        for p in model.parameters():
            p.data = p.data.contiguous()
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in blocks:
            fully_shard(block)
        fully_shard(model)
    model.to_empty(device=info.device)
    load_model_state(model, init_state)
    ref_buffers = dict(reference.named_buffers())
    with torch.no_grad():
        for name, buf in model.named_buffers():
            buf.copy_(ref_buffers[name].to(buf.device))
    forward = model
    if strategy == "ddp" and info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.device.index] if info.device.type == "cuda" else None
        # The VAE's time layers sit out image batches: let DDP find the unused parameters.
        forward = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
    return model, forward


@contextlib.contextmanager
def no_grad_sync(forward: nn.Module, sync: bool) -> Iterator[None]:
    """Skips the gradient all-reduce on accumulation micro-steps that are not the last."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(forward, FSDPModule):
        forward.set_requires_gradient_sync(sync)
        yield
    elif sync or not hasattr(forward, "no_sync"):
        yield
    else:
        with forward.no_sync():
            yield


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Returns the full (unsharded) state dict on CPU; every rank must call it."""
    return get_model_state_dict(model, options=_FULL)


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Loads a full state dict into a plain, DDP'd or fully_shard'ed model (any world size)."""
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def optimizer_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """Returns the optimizer's full state keyed by parameter name; every rank must call it."""
    return get_optimizer_state_dict(model, opt, options=_FULL)


def load_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    """Loads a full, name-keyed optimizer state saved at any world size.

    Not strict: a parameter that never had a gradient has no state (AdamW makes it on the first
    one), e.g. the VAE's time convs after a phase of 1-frame images; it starts fresh, exactly
    as in the uninterrupted run.
    """
    opts = StateDictOptions(full_state_dict=True, strict=False)
    set_optimizer_state_dict(model, opt, state, options=opts)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """Returns the whole tensor: gathers a DTensor (collective), passes a plain one through."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def like(full: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Returns `full` laid out like `target`: sharded the same way when target is a DTensor."""
    if isinstance(target, DTensor):
        return distribute_tensor(
            full.to(target.device_mesh.device_type), target.device_mesh, target.placements
        )
    return full.to(target.device)
