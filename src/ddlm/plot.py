"""Plots of training runs: loss, validation bound (bpc) and learning rate against the step, from `log.csv`.

    ddlm plot runs/a runs/b --out compare.png

matplotlib is an optional extra (`pip install "ddlm[plot]"`); it is imported only here, when a plot is drawn.
A PNG that ddlm writes carries the tag `Software: ddlm plot`, so a later plot may replace it, and any other
file at the output path is left alone.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from .errors import UserError

PNG_TAG = "ddlm plot"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_log(run_dir) -> dict:
    """The rows of `RUN_DIR/log.csv` as {"train": {column: [floats]}, "val": {column: [floats]}}.
    An empty cell is NaN, so every column of a split has one value per row of that split."""
    path = Path(run_dir) / "log.csv"
    if not path.is_file():
        raise UserError(f"{run_dir} has no log.csv; pass a run directory written by `ddlm train`")
    out = {"train": {}, "val": {}}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "step" not in reader.fieldnames:
            raise UserError(f"{path} is not a ddlm training log (no 'step' column)")
        for row in reader:
            split = out.setdefault(row.get("split") or "train", {})
            for key, value in row.items():
                if key in (None, "split"):
                    continue
                split.setdefault(key, []).append(_number(value))
    return out


def _number(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


# (panel title, split, column, y label)
PANELS = (("training loss", "train", "loss", "loss (nats/token)"),
          ("validation bound", "val", "bpc", "bits per character (bpc)"),
          ("learning rate", "train", "lr", "lr"))


def draw(run_dirs, labels=None):
    """A matplotlib Figure with one panel per entry of PANELS and one line per run."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # no display needed, and none is opened
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError('ddlm plot needs matplotlib: pip install "ddlm[plot]" (or pip install matplotlib)') \
            from None
    logs = [read_log(d) for d in run_dirs]
    labels = list(labels) if labels else [Path(d).name or str(d) for d in run_dirs]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.6))
    for ax, (title, split, column, ylabel) in zip(axes, PANELS):
        for log, label in zip(logs, labels):
            rows = log.get(split, {})
            steps, values = rows.get("step", []), rows.get(column, [])
            points = [(s, v) for s, v in zip(steps, values) if not math.isnan(v)]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if split == "val" else None,
                        label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        if column == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        ax.grid(alpha=0.3)
    if len(logs) > 1:
        axes[0].legend()
    fig.tight_layout()
    return fig


def save(fig, out) -> Path:
    """Write the figure as PNG to `out`, refusing to replace a file that ddlm plot did not write."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out must name a .png file, got {out}")
    if out.exists() and not is_ddlm_png(out):
        raise UserError(f"{out} exists and was not written by ddlm plot; choose another --out or remove it")
    if not out.parent.is_dir():
        raise UserError(f"the folder of {out} does not exist; create it or choose another --out")
    tmp = out.with_name(out.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=110, metadata={"Software": PNG_TAG})
    os.replace(tmp, out)  # a reader never sees half a PNG
    return out


def is_ddlm_png(path: Path) -> bool:
    """True if `path` is a PNG whose tEXt chunks name ddlm plot as the software that wrote it."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return False
    if not data.startswith(PNG_MAGIC):
        return False
    pos = len(PNG_MAGIC)
    while pos + 8 <= len(data):  # chunks: length (4, big-endian), type (4), data, CRC (4)
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"tEXt" and body == b"Software\x00" + PNG_TAG.encode():
            return True
        if kind == b"IDAT":  # matplotlib writes its text chunks before the image data
            return False
        pos += 12 + length
    return False


def plot_runs(run_dirs, out=None, labels=None) -> Path:
    """Draw and save; the default output is RUN_DIR/curves.png for one run (a file inside ddlm's own run)."""
    run_dirs = [Path(d) for d in run_dirs]
    if out is None:
        if len(run_dirs) > 1:
            raise UserError("several runs go on one figure: name it with --out FILE.png")
        out = run_dirs[0] / "curves.png"
    if labels is not None and len(labels) != len(run_dirs):
        runs = f"{len(run_dirs)} run" + ("s" if len(run_dirs) != 1 else "")
        raise UserError(f"--labels needs one name per run: got {len(labels)} for {runs}")
    fig = draw(run_dirs, labels)
    try:
        return save(fig, out)
    finally:
        import matplotlib.pyplot as plt
        plt.close(fig)
