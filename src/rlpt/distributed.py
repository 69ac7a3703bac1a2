"""Scale-out on torch.distributed (DESIGN.md section 5): `torchrun --nproc-per-node N -m rlpt train ...`.

Each rank takes its slice of the step's global batch of documents (`train.batch_documents` per rank), so a
(document, position) group never straddles ranks, and samples, scores and backpropagates its own thoughts. The
parameters follow `train.parallel`:
- `ddp`: every rank holds the whole model; gradients are averaged after the last micro-batch (`replicate`, the
  composable form of DistributedDataParallel, which keeps the Hugging Face module as it is).
- `fsdp`: FSDP2 `fully_shard` on every decoder layer and the root. Parameters, gradients and optimizer state are
  sharded at rest, and the EMA teacher is sharded like the model. For the many forwards of decoding and for the
  update they are gathered once per phase (`gathered`), not per forward.
CPU runs use gloo, CUDA runs NCCL, from the same code. Without torchrun, `ddp` is a plain single-process run and
`fsdp` runs in a one-process group, so a sharded checkpoint resumes in one process.
"""

from __future__ import annotations

import datetime
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from rlpt.errors import UserError

PARALLEL = ("ddp", "fsdp")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    parallel: str = "ddp"
    compute_dtype: torch.dtype = torch.float32

    @property
    def main(self) -> bool:
        """Rank 0 alone writes files, logs and shows progress."""
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.parallel == "fsdp"


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def resolve_device(name: str) -> torch.device:
    """`auto`: CUDA when available. Under torchrun a CUDA run uses the GPU of its LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


@contextmanager
def session(parallel: str, device: torch.device, compute_dtype: torch.dtype, timeout_s: float):
    """The process group of this run, when it needs one; torn down on the way out if this call made it."""
    if parallel not in PARALLEL:
        raise UserError(f"train.parallel: {parallel!r} is not one of {list(PARALLEL)}")
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    made = False
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if launched_by_torchrun():  # NCCL is told its GPU: guessing it from the rank can hang
            dist.init_process_group(backend, timeout=timeout, device_id=device if device.type == "cuda" else None)
            made = True
        elif parallel == "fsdp":  # FSDP needs a process group, even of one
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
            made = True
    world = World(dist.get_rank() if dist.is_initialized() else 0, dist.get_world_size() if dist.is_initialized() else 1,
                  parallel, compute_dtype)
    try:
        yield world
    except Exception as exc:
        if world.size > 1 and collective_failure(exc):
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"rank {world.rank} of {world.size}: a collective operation failed ({first_line}). Another process "
                f"has probably died: see its log. (A hung one is given up on after train.dist_timeout_s = {timeout_s:g} s.) "
                "Rerun the same command to resume from the last checkpoint."
            ) from exc
        raise
    finally:
        if made:
            dist.destroy_process_group()


def collective_failure(exc: BaseException) -> bool:
    """An error of the communication backend (a peer died, a timeout), as opposed to a bug on this rank."""
    return isinstance(exc, dist.DistError) or (
        isinstance(exc, RuntimeError) and any(word in str(exc) for word in ("gloo", "NCCL", "c10d", "Connection")))


def decoder_layers(model) -> list[torch.nn.Module]:
    """The repeated blocks of a Hugging Face model: the classes it lists in `_no_split_modules`."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def shard(model, world: World) -> None:
    """FSDP2 on each decoder layer, then the root (embeddings, final norm, head). Master weights stay float32;
    with `model.dtype: bfloat16` forwards run in bfloat16 and gradients are reduced in float32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=world.compute_dtype, reduce_dtype=torch.float32)
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=policy)
    # the root too reshards after a forward (FSDP keeps it gathered by default): `gathered` decides when to keep
    fully_shard(model, mp_policy=policy, reshard_after_forward=True)


def parallelize(model, world: World):
    """Wrap the policy in place for `world`; a single process under `ddp` needs nothing."""
    if world.sharded:
        shard(model, world)
    elif world.size > 1:
        import inspect

        from torch.distributed._composable import replicate
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        # buffers are rotary tables computed from the config: identical on every rank, no need to sync per forward
        # (torch 2.13 renamed the switch)
        renamed = "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
        replicate(model, device_ids=[device.index] if device.type == "cuda" else None,
                  **{"forward_sync_buffers" if renamed else "broadcast_buffers": False})
    return model


def is_wrapped(model) -> bool:
    return hasattr(model, "set_requires_gradient_sync")


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded (DTensor) parameter; a plain tensor as it is."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


@contextmanager
def gathered(model):
    """Under FSDP: all-gather the parameters once for a phase of many forwards (decoding, the update) and keep them
    until it ends. Besides saving an all-gather per forward, the update needs it: the packed engine's document keys
    and values carry gradient into each layer outside the layer's output, where FSDP's backward hooks would not
    gather the layer again. Gradients are still reduce-scattered in the backward."""
    from torch.distributed.fsdp import FSDPModule

    groups = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not groups:
        yield
        return
    model.set_reshard_after_forward(False)
    model.set_reshard_after_backward(False)
    for group in groups:
        group.unshard()
    try:
        yield
    finally:
        for group in groups:
            group.reshard()
        model.set_reshard_after_forward(True)
        model.set_reshard_after_backward(True)


def autocast(world: World, device: torch.device):
    """bfloat16 compute over float32 weights outside FSDP (FSDP casts through its mixed-precision policy)."""
    if world.compute_dtype == torch.float32 or world.sharded:
        return nullcontext()
    return torch.autocast(device.type, dtype=world.compute_dtype)


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over ranks (identity in one process)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_gather(obj) -> list:
    """Every rank's `obj`, in rank order (a one-item list in one process)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextmanager
def main_first(world: World):
    """Rank 0 runs the block before the other ranks do (it fills a cache that they then read)."""
    if not world.main:
        barrier()
    yield
    if world.main:
        barrier()
