"""Where a training process computes (`train.device`) and which process-group backend carries its tensors.

    train.device=auto      cuda if torch sees a CUDA device, else cpu (the default)
    train.device=cpu | cuda | cuda:N | mps

Under torchrun, process r of a machine takes cuda:LOCAL_RANK (one GPU per process) and DDP all-reduces its
gradients over NCCL; on the CPU over gloo. `resolve_device` is a function of the setting, the process's place
on its machine and what torch reports (torch.cuda.is_available / device_count), so the choice is tested
without a GPU by patching those two.
"""

from __future__ import annotations

import copy

import torch

from ..errors import UserError

FORMS = "auto, cpu, cuda, cuda:N or mps"


def parse_device(spec, name: str = "train.device") -> tuple[str, int | None]:
    """('auto' | 'cpu' | 'cuda' | 'mps', GPU index or None) of a device value; UserError naming `name` if
    malformed."""
    if isinstance(spec, str):
        kind, sep, index = spec.partition(":")
        if kind in ("auto", "cpu", "mps", "cuda") and not sep:
            return kind, None
        if kind == "cuda" and index.isascii() and index.isdigit():
            return kind, int(index)
    raise UserError(f"{name} must be {FORMS}, got {spec!r}")


def resolve_device(spec: str, local_rank: int = 0, local_world: int = 1, name: str = "train.device") -> torch.device:
    """The device of process `local_rank` of the `local_world` processes on this machine; UserError if absent."""
    kind, index = parse_device(spec, name)
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UserError(f"{name}={spec} but torch sees no MPS (Apple GPU) device; use {name}=cpu")
        if local_world > 1:
            raise UserError(f"{name}=mps trains in one process; under torchrun use {name}=cpu or cuda")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise UserError(f"{name}={spec} but torch sees no CUDA device; use {name}=cpu or install a "
                        "CUDA build of torch")
    n = torch.cuda.device_count()
    if index is None:  # one GPU per process of this machine
        if local_rank >= n:
            raise UserError(f"torchrun started {local_world} processes on this machine but torch sees {n} CUDA "
                            f"device(s); use --nproc_per_node={n}, or {name}=cpu")
        return torch.device("cuda", local_rank)
    if local_world > 1:
        raise UserError(f"{name}={spec} would put all {local_world} processes of this machine on one GPU; "
                        f"use {name}=cuda (process r takes cuda:LOCAL_RANK)")
    if index >= n:
        raise UserError(f"{name}={spec} but torch sees {n} CUDA device(s) (cuda:0 to cuda:{n - 1}); "
                        f"choose one of those or {name}=cuda")
    return torch.device("cuda", index)


def backend_for(device: torch.device) -> str:
    """The process-group backend for gradients on `device`: NCCL moves CUDA tensors, gloo CPU ones."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def to_cpu(tree):
    """`tree` (tensors in dicts, lists, tuples) with every tensor on the CPU, for a checkpoint any machine can
    read. Containers are rebuilt only where a tensor moved: a CPU tree comes back as the very same object."""
    if isinstance(tree, torch.Tensor):
        return tree.cpu()  # the tensor itself when it is on the CPU already
    if isinstance(tree, dict):
        items = {k: to_cpu(v) for k, v in tree.items()}
        if all(items[k] is v for k, v in tree.items()):
            return tree
        out = copy.copy(tree)  # keeps the type and attributes, e.g. a state_dict's _metadata
        out.update(items)
        return out
    if isinstance(tree, (list, tuple)):
        items = [to_cpu(v) for v in tree]
        if all(a is b for a, b in zip(items, tree)):
            return tree
        return type(tree)(*items) if hasattr(tree, "_fields") else type(tree)(items)
    return tree


def place(spec: str, rank: int, world: int) -> torch.device:
    """This process's training device (cuda:LOCAL_RANK under torchrun); every rank must agree on its kind."""
    local_rank, local_world = 0, 1
    if world > 1:
        from .distributed import from_env, same_on_all_ranks
        env = from_env()
        local_rank, local_world = (env.local_rank, env.local_world) if env.world == world else (rank, world)
    try:
        device, error = resolve_device(spec, local_rank, local_world), None
    except UserError as e:
        device, error = None, e
    # a rank that fails or differs would leave the others waiting forever in DDP: all ranks stop together
    kind = -1 if device is None else ["cpu", "cuda", "mps"].index(device.type)
    if world > 1 and not same_on_all_ranks(kind) and error is None:
        error = UserError(f"train.device={spec} gives different devices on different processes (this one: "
                          f"{device}); set train.device=cpu or train.device=cuda")
    if error is not None:
        raise error
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL and the CUDA RNG use the current device
    return device
