"""The run directory: what marks one, what `--overwrite` may delete, and whether a checkpoint fits its config.

ddlm writes a marker file `.ddlm-run` (JSON: ddlm version, creation time) into every run directory it creates;
older runs are recognised by `config.yaml` next to `checkpoints/` or `log.csv`. `--overwrite` replaces only
such a directory, and deletes only the entries ddlm writes there (OWNED): a folder with anything else in it
(a thesis, a `.git`) is refused with one line that names one foreign entry, so nothing ddlm did not write is
ever deleted.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path

from ..errors import UserError

MARKER = ".ddlm-run"
# every entry the trainer writes into a run directory (the *.tmp ones exist only while a write is under way)
OWNED = frozenset({MARKER, "config.yaml", "config.yaml.tmp", "tokenizer.json", "tokenizer.json.tmp", "log.csv",
                   "log.csv.tmp", "checkpoints", "model", "tensorboard",
                   # `ddlm finetune` (guidance/cli_finetune.py):
                   "surrogate", "drakes.json", "grpo.json"})
# folders that hold a project or a home, never a run: refused even when asked to overwrite
_PROJECT_FILES = (".git", "pyproject.toml", "setup.py", ".hg")


def write_marker(run_dir: Path) -> None:
    """Mark `run_dir` as a ddlm run (a small JSON file; its presence is what counts)."""
    from .. import __version__

    info = {"ddlm": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (Path(run_dir) / MARKER).write_text(json.dumps(info) + "\n")


def is_run(path: Path) -> bool:
    """Whether `path` is a ddlm run directory: the marker, or (runs from before it) config.yaml with
    checkpoints/ or log.csv."""
    path = Path(path)
    if (path / MARKER).is_file():
        return True
    return (path / "config.yaml").is_file() and ((path / "checkpoints").is_dir() or (path / "log.csv").is_file())


def _protected(path: Path) -> str | None:
    """Why `path` may never be overwritten (the working directory, a home, the root, a project), or None."""
    real = path.resolve()
    if real == Path.cwd().resolve():
        return "it is the current directory"
    if real == Path.home().resolve():
        return "it is the home directory"
    if real == Path(real.anchor):
        return "it is the root of the file system"
    for name in _PROJECT_FILES:
        if (real / name).exists():
            return f"it holds {name} (a project folder, not a run)"
    return None


def check_run_dir(out: Path, *, overwrite: bool, resumable: bool = True) -> bool:
    """Whether a new run may be written into `out` (UserError if not); True when `clear_run_dir` must run first.

    Absent or empty: fine. A ddlm run: refused without `overwrite`, else to be cleared. Anything else
    non-empty: refused, with or without `overwrite`. resumable: whether the command can --resume (the refusal
    of an earlier run offers it)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a run directory; choose another --out")
    if not out.exists() or not any(out.iterdir()):
        return False
    if not overwrite:
        if is_run(out):
            if not resumable:
                raise UserError(f"run directory {out} holds an earlier run; use --overwrite to replace it or choose "
                                "another --out")
            raise UserError(f"run directory {out} is not empty; use --resume {out} to continue it or --overwrite "
                            "to start again")
        raise UserError(f"{out} is not empty and is not a ddlm run; choose another --out (a new or empty folder)")
    reason = _protected(out)
    if reason is not None:
        raise UserError(f"--overwrite refuses {out}: {reason}; choose another --out")
    if not is_run(out):
        raise UserError(f"--overwrite refuses {out}: it is not a ddlm run (no {MARKER} or config.yaml with "
                        "checkpoints/ or log.csv); choose another --out")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in OWNED)
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise UserError(f"--overwrite refuses {out}: it holds {foreign[0]!r}{more}, which ddlm did not write; "
                        "move it away or choose another --out")
    return True


def clear_run_dir(out: Path) -> None:
    """Delete the entries a ddlm run writes (OWNED), and nothing else, from `out` (checked by check_run_dir)."""
    for name in sorted(OWNED):
        p = Path(out) / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


# fields that define the network and the objective: a checkpoint must agree with config.yaml on these;
# the training schedule (max_steps, lr, threads, device, log/eval/ckpt intervals, ...) and sampling may change
_MODEL_SECTIONS = ("model", "process")
_MODEL_DATA_FIELDS = ("tokenizer", "vocab_size")


def config_mismatch(saved: dict, cfg) -> list[str]:
    """'section.field: A (checkpoint) vs B (config.yaml)' for each model/objective field where the config a
    checkpoint was written with (`saved`, a RunConfig dict) differs from `cfg`. A field the checkpoint does not
    record (a version before it existed) counts as its default."""
    from ..config import RunConfig

    current, default = cfg.to_dict(), RunConfig().to_dict()
    keys = [(s, f) for s in _MODEL_SECTIONS for f in current[s]] + [("data", f) for f in _MODEL_DATA_FIELDS]
    out = []
    for section, name in keys:
        if section == "data" and name == "vocab_size" and current["data"]["tokenizer"] != "bpe":
            continue  # only a BPE tokenizer's size is set by vocab_size
        old = (saved.get(section) or {}).get(name, default[section][name])
        new = current[section][name]
        if _norm(old) != _norm(new):
            out.append(f"{section}.{name}: {_show(old)} (checkpoint) vs {_show(new)} (config.yaml)")
    return out


def _norm(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def _show(v):
    return list(v) if isinstance(v, tuple) else v


class CSVLog:
    """log.csv: one row per logged training step and per validation; `rows` counts the data rows."""

    FIELDS = ["step", "split", "loss", "nelbo", "masked_ce", "bpc", "lr", "grad_norm", "tokens_per_s",
              "elapsed_s"]

    def __init__(self, path: Path):
        self.path = path
        if not path.exists():
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(self.FIELDS)
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        self.rows = len(rows)
        self.last = rows[-1] if rows else None  # the newest row, e.g. to see that a final validation is there

    def write(self, **row) -> None:
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(k, "")) for k in self.FIELDS])
        self.rows += 1
        self.last = {k: str(_fmt(row.get(k, ""))) for k in self.FIELDS}

    @classmethod
    def truncate(cls, path: Path, step: int) -> None:
        """Keep the header and the complete rows of steps <= `step` (those of the checkpoint resumed from).

        Every row of a step is written before that step's checkpoint, except the final validation, written
        after the final checkpoint: it is kept too, so a finished run that is resumed (or extended) keeps it."""
        if not path.exists():
            return
        with open(path, newline="") as f:
            lines = f.read().splitlines(keepends=True)[1:]
        if lines and not lines[-1].endswith("\n"):
            lines = lines[:-1]  # a row cut short by a kill
        keep = []
        for line in lines:
            first = line.split(",", 1)[0]
            if not first.isdigit() or int(first) > step:
                break  # rows are in step order: the rest came after the checkpoint
            keep.append(line)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerow(cls.FIELDS)  # the header too may have been cut short
            f.write("".join(keep))
        os.replace(tmp, path)


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v
