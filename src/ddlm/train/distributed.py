"""Several training processes (torchrun + DistributedDataParallel): the process group, and what ranks share.

    torchrun --nproc_per_node=2 -m ddlm train --preset quick --out runs/ddp

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in every process. `from_env` reads
them (a plain `python -m ddlm train` has none and is rank 0 of 1), `init` starts the default process group
(gloo: it carries the small CPU all-reduces of the metrics, the stop flag and the barriers). The Trainer then
shards each global batch by rows (rank r takes rows r::world), DDP averages the gradients (the mean over
ranks of per-rank means is the global mean because every rank holds the same number of rows), and rank 0
alone writes the run directory. On CUDA (train.device, see device.py) rank r computes on cuda:LOCAL_RANK and
DDP all-reduces the gradients over an NCCL group of all ranks (`group_for`); on the CPU over the gloo group.

Randomness: every rank starts from the same seed, so the weights start equal (DDP also broadcasts rank 0's).
The noise of the objective (t, masks) and dropout must differ between ranks, and must not depend on a
generator state that only rank 0 saves: with world > 1 both are re-seeded at every step from
(seed, step, rank) (`step_seed`), so a resumed run draws exactly what an uninterrupted one draws.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import UserError

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: rank of world, its local rank on this machine, and the backend to use."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    backend: str = "gloo"


def from_env(environ=None, device: str = "cpu") -> DistEnv:
    """The torchrun variables of this process (rank 0 of 1 when there are none); UserError if malformed."""
    environ = os.environ if environ is None else environ
    present = [k for k in _ENV if k in environ]
    if not present:
        return DistEnv()
    if len(present) != len(_ENV):
        missing = sorted(set(_ENV) - set(present))
        raise UserError(f"{', '.join(present)} set but {', '.join(missing)} missing; start several processes "
                        "with `torchrun --nproc_per_node=N -m ddlm train ...`")
    try:
        rank, world, local = (int(environ[k]) for k in _ENV)
        local_world = int(environ.get("LOCAL_WORLD_SIZE", world))
    except ValueError:
        raise UserError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers, got "
                        f"{[environ[k] for k in _ENV]}; let torchrun set them") from None
    if world < 1 or not 0 <= rank < world or not 0 <= local < max(local_world, 1):
        raise UserError(f"inconsistent torchrun variables RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}")
    # NCCL moves only CUDA tensors and the Trainer's metrics and stop flag are CPU tensors, so the default group
    # is gloo unless asked for cuda; a CUDA run adds an NCCL group for its gradients (group_for)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    return DistEnv(rank, world, local, max(local_world, 1), backend)


def init(env: DistEnv, timeout_s: float = 1800.0) -> DistEnv:
    """Start the process group for `env` (nothing to do for one process); returns env."""
    if env.world == 1 or (dist.is_available() and dist.is_initialized()):
        return env
    if not dist.is_available():
        raise UserError("this torch build has no torch.distributed; train with one process")
    for k in ("MASTER_ADDR", "MASTER_PORT"):
        if k not in os.environ:
            raise UserError(f"{k} is not set; start several processes with `torchrun --nproc_per_node=N ...`")
    if env.backend == "nccl":
        if not torch.cuda.is_available():
            raise UserError("the nccl backend needs CUDA GPUs; none is visible to this process")
        torch.cuda.set_device(env.local_rank)
    import datetime

    dist.init_process_group(env.backend, rank=env.rank, world_size=env.world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return env


def group_for(backend: str):
    """The process group for DDP's gradients with `backend`: None (the default group) when the default group
    uses that backend for those tensors, else a new group of all ranks (every rank must call this, in step)."""
    if not is_distributed():
        return None
    device_type = "cuda" if backend == "nccl" else "cpu"
    config = dict(part.split(":", 1) for part in dist.get_backend_config().split(",") if ":" in part)
    if config.get(device_type, dist.get_backend()) == backend:
        return None
    return dist.new_group(backend=backend)


def threads_per_rank(env: DistEnv) -> int:
    """CPU threads each local process should use so that the ranks of one machine do not oversubscribe it."""
    return max(1, (os.cpu_count() or 1) // env.local_world)


def check_batch(batch_size: int, grad_accum: int, world: int) -> None:
    """Every rank must hold the same number of rows in every micro-batch, or the DDP mean is not the global one."""
    if batch_size % world:
        raise UserError(f"train.batch_size={batch_size} must be divisible by the number of processes ({world})")
    if (batch_size // world) % grad_accum:
        raise UserError(f"train.batch_size / processes = {batch_size // world} must be divisible by "
                        f"train.grad_accum={grad_accum}")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every rank (nothing with one process): e.g. no rank reads the run directory while rank 0 clears it."""
    if is_distributed():
        dist.barrier()


def mean_over_ranks(metrics: dict) -> dict:
    """The average of each float over ranks (one all-reduce), so that rank 0 logs the global batch's loss."""
    if not is_distributed() or not metrics:
        return metrics
    keys = sorted(metrics)
    v = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(v)
    return {k: float(x) / dist.get_world_size() for k, x in zip(keys, v)}


def any_rank(flag: bool) -> bool:
    """Whether any rank has `flag` set (one all-reduce): e.g. all ranks stop when one was interrupted."""
    if not is_distributed():
        return flag
    v = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(v, op=dist.ReduceOp.MAX)
    return bool(v.item())


def same_on_all_ranks(value: int) -> bool:
    """Whether every rank passes the same integer (one all-reduce of (value, -value) with MAX)."""
    if not is_distributed():
        return True
    v = torch.tensor([value, -value], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(v, op=dist.ReduceOp.MAX)
    return int(v[0]) == -int(v[1])


def _collective_device() -> torch.device:
    """Where the small all-reduces put their tensors: the CPU, unless the default group is NCCL alone (which
    moves only CUDA tensors: then this rank's current GPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def no_sync(module, last: bool):
    """DDP's no_sync for all micro-batches but the last: one gradient all-reduce per optimiser step."""
    inner = getattr(module, "_orig_mod", module)  # torch.compile wraps the DDP module
    if last or not hasattr(inner, "no_sync"):
        return nullcontext()
    return inner.no_sync()


def step_seed(seed: int, step: int, rank: int) -> int:
    """A 63-bit seed for (seed, step, rank): distinct streams per rank and step, the same after a resume."""
    x = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + rank * 0x94D049BB133111EB + 1) % (1 << 64)
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) % (1 << 64)
    return x >> 1


def reseed_step(noise: torch.Generator, seed: int, step: int, rank: int) -> None:
    """Re-seed the training noise and the global RNG (dropout) for this step and rank (used when world > 1)."""
    s = step_seed(seed, step, rank)
    noise.manual_seed(s)
    torch.manual_seed(s ^ 0x5DEECE66D)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
