"""train.tensorboard=true: the scalars in RUN/tensorboard are log.csv's rows (train loss and lr per logged step,
validation bpc), and without the tensorboard package the run stops first with a one-line UserError."""

from __future__ import annotations

import csv
import sys

import pytest

import ddlm
from ddlm.errors import UserError

OVERRIDES = ["train.max_steps=4", "train.log_every=2", "train.eval_every=2", "model.max_len=16",
             "train.ckpt_every=4", "train.tensorboard=true"]


def test_scalars_are_the_rows_of_log_csv(tmp_path):
    pytest.importorskip("tensorboard", reason="pip install tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    ddlm.fit(ddlm.apply_overrides(ddlm.load_preset("tiny"), OVERRIDES), out, progress=False)
    with open(out / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    for split, column, tag in (("train", "loss", "train/loss"), ("train", "lr", "train/lr"),
                               ("val", "bpc", "val/bpc")):
        expected = [(int(r["step"]), float(r[column])) for r in rows if r["split"] == split]
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in expected] and len(expected) >= 2, tag
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-4)  # log.csv rounds


def test_without_the_package_one_line_before_the_run(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # importing it raises ImportError
    out = tmp_path / "run"
    with pytest.raises(UserError, match="pip install tensorboard") as e:
        ddlm.fit(ddlm.apply_overrides(ddlm.load_preset("tiny"), OVERRIDES), out, progress=False)
    assert "\n" not in str(e.value)
    assert not (out / "log.csv").exists()
