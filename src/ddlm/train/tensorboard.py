"""train.tensorboard=true: the rows of log.csv also go to TensorBoard (RUN/tensorboard), through
`torch.utils.tensorboard.SummaryWriter`, which needs the optional `tensorboard` package."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError

# log.csv column -> TensorBoard tag, per split: what `ddlm plot` draws (loss, validation bpc, lr) and a bit more
TAGS = {"train": {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
                  "tokens_per_s": "train/tokens_per_s"},
        "val": {"loss": "val/loss", "bpc": "val/bpc"}}


def check_tensorboard() -> None:
    """UserError (one line) unless the tensorboard package is importable."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise UserError("train.tensorboard=true needs the tensorboard package: pip install tensorboard "
                        "(or set train.tensorboard=false)") from None


class TensorBoardLog:
    """A CSVLog that also writes each row's scalars to TensorBoard event files in `directory`."""

    def __init__(self, csv_log, directory: Path):
        check_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.csv, self.writer = csv_log, SummaryWriter(log_dir=str(directory))

    def write(self, **row) -> None:
        self.csv.write(**row)
        for column, tag in TAGS.get(row.get("split"), {}).items():
            value = row.get(column)
            if isinstance(value, (int, float)):
                self.writer.add_scalar(tag, float(value), int(row["step"]))
        self.writer.flush()  # a run read while it trains shows every row so far

    def __getattr__(self, name):  # rows, last, ...: those of log.csv
        return getattr(self.csv, name)
