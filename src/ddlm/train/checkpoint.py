"""Resumable training checkpoints, written atomically and verified by checksum.

A checkpoint `checkpoints/step-000100.pt` holds everything needed to continue exactly: model, EMA,
optimiser, step, RNG states and the config (the data position is the step: batches depend on (seed, step)).
It is written as `*.tmp`, flushed to disk, then renamed; its SHA-256 is stored in `step-000100.sha256`
(written after the checkpoint). A checkpoint whose checksum is missing or wrong is skipped with a message,
and the newest good one is used.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

import torch

from ..errors import UserError

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


def save_checkpoint(run_dir, state: dict, keep: int = 2) -> Path:
    """Write state (must contain 'step') and remove all but the newest `keep` checkpoints."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    path = ckpt_dir / f"step-{state['step']:08d}.pt"
    try:
        _atomic_write(path, data)
        _atomic_write(path.with_suffix(".sha256"), hashlib.sha256(data).hexdigest().encode())
    except OSError as e:
        raise UserError(f"cannot write checkpoint {path}: {e.strerror}; free disk space or choose another "
                        "--out, then resume from the previous checkpoint") from None
    for old in list_checkpoints(run_dir)[keep:]:
        old.unlink(missing_ok=True)
        old.with_suffix(".sha256").unlink(missing_ok=True)
    return path


def list_checkpoints(run_dir) -> list[Path]:
    """Checkpoint files of a run, newest first."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _NAME.search(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def verify(path: Path) -> bytes | None:
    """The checkpoint's bytes if its checksum matches, else None."""
    digest = path.with_suffix(".sha256")
    if not digest.is_file():
        return None
    data = path.read_bytes()
    return data if hashlib.sha256(data).hexdigest() == digest.read_text().strip() else None


def load_latest(run_dir, log=print) -> dict | None:
    """The newest checkpoint that verifies; damaged ones are reported and skipped. None if there is none."""
    for path in list_checkpoints(run_dir):
        data = verify(path)
        if data is None:
            log(f"checkpoint {path} is incomplete or damaged (checksum mismatch); trying an older one")
            continue
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    return None


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
