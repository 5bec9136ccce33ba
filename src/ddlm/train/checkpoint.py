"""Resumable training checkpoints, written atomically and verified by checksum.

A checkpoint `checkpoints/step-000100.pt` holds everything needed to continue exactly: model, EMA,
optimiser, step, RNG states, the config and the number of log.csv rows written so far (the data position is
the step: batches depend on (seed, step)).
It is written as `*.tmp`, flushed to disk, then renamed; its SHA-256 is stored in `step-000100.sha256`
(written after the checkpoint). A checkpoint whose checksum is missing (the process was killed between the
two renames: *incomplete*) or wrong (the file changed on disk: *damaged*) is skipped with a message, and the
newest good one is used. A SIGKILL can only ever leave an incomplete checkpoint, never a damaged one.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

import torch

from ..errors import UserError
from .device import to_cpu

_NAME = re.compile(r"step-(\d+)\.pt$")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:
        pass


def save_checkpoint(run_dir, state: dict, keep: int = 2, resume_command: str | None = None,
                    protect=()) -> Path:
    """Write state (must contain 'step'), its tensors moved to the CPU, and remove all but the newest `keep`
    checkpoints, except those of the steps in `protect`. resume_command: what continues the run, for the message
    when the disk is full (default `ddlm train --resume RUN_DIR`)."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(to_cpu(state), buf)
    data = buf.getvalue()
    path = ckpt_dir / f"step-{state['step']:08d}.pt"
    try:
        _atomic_write(path, data)
        _atomic_write(path.with_suffix(".sha256"), hashlib.sha256(data).hexdigest().encode())
    except OSError as e:
        raise UserError(f"cannot write checkpoint {path}: {e.strerror}; free disk space, then "
                        f"`{resume_command or f'ddlm train --resume {run_dir}'}` continues from the previous "
                        "checkpoint") from None
    for old in list_checkpoints(run_dir)[keep:]:
        if step_of(old) in protect:
            continue
        old.unlink(missing_ok=True)
        old.with_suffix(".sha256").unlink(missing_ok=True)
    return path


def list_checkpoints(run_dir) -> list[Path]:
    """Checkpoint files of a run, newest first."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    if not ckpt_dir.is_dir():
        return []
    found = [(step_of(p), p) for p in ckpt_dir.iterdir() if _NAME.search(p.name)]
    return [p for _, p in sorted(found, reverse=True)]


def step_of(path: Path) -> int:
    """The step in a checkpoint's file name (step-00000100.pt -> 100)."""
    return int(_NAME.search(Path(path).name).group(1))


def verify(path: Path) -> bytes | None:
    """The checkpoint's bytes if its checksum matches, else None."""
    digest = path.with_suffix(".sha256")
    if not digest.is_file():
        return None
    data = path.read_bytes()
    return data if hashlib.sha256(data).hexdigest() == digest.read_text().strip() else None


def remove_partial_writes(run_dir) -> None:
    """Delete *.tmp files a killed run left in checkpoints/ (never renamed, so never trusted)."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    if ckpt_dir.is_dir():
        for p in ckpt_dir.glob("*.tmp"):
            p.unlink(missing_ok=True)


def is_complete(path: Path) -> bool:
    """Whether the checkpoint's write finished (its checksum file exists); says nothing about its bytes."""
    return path.with_suffix(".sha256").is_file()


def load_latest(run_dir, log=print) -> dict | None:
    """The newest checkpoint that verifies; others are reported and skipped. None if there is none."""
    for path in list_checkpoints(run_dir):
        data = verify(path)
        if data is None:
            why = ("damaged (checksum mismatch)" if is_complete(path)
                   else "incomplete (no checksum: the run stopped while writing it)")
            log(f"checkpoint {path} is {why}; trying an older one")
            continue
        return read_checkpoint(path, data)
    return None


def read_checkpoint(path: Path, data: bytes) -> dict:
    """The state in a checkpoint's verified bytes `data` (verify(path)), on the CPU: load_state_dict copies into
    the weights where they are, and the optimiser moves its state to its parameters' device."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as e:  # right checksum but unreadable: written by an incompatible torch/ddlm
        raise UserError(f"checkpoint {path} cannot be read ({type(e).__name__}); it was written by an "
                        "incompatible version, resume with that version or start again") from None


def rng_state() -> dict:
    import random

    import numpy as np

    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
