"""`ddlm export RUN --step N --out DIR` (cli_export.py): a checkpoint's weights as a model folder. A train run
exports its EMA weights as the trainer does; a GRPO run (tests/guidance/test_finetune_cli.py) its backbone."""

from __future__ import annotations

import pytest
import torch

from cli_harness import run_cli
from ddlm.pipeline import SequenceModel
from ddlm.train.checkpoint import list_checkpoints, read_checkpoint, verify


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run of 4 steps with checkpoints at steps 2 and 4."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("export") / "run"
    code, _, err = run_cli(["train", "--preset", "tiny", "--out", str(out), "--quiet", "--max-steps", "4",
                            "train.ckpt_every=2", "model.max_len=32"])
    assert code == 0, err
    return out


def _state(run, step):
    path = next(p for p in list_checkpoints(run) if p.name == f"step-{step:08d}.pt")
    return read_checkpoint(path, verify(path))


def _weights(directory):
    return SequenceModel.from_pretrained(directory).backbone.state_dict()


def test_each_checkpoint_exports_its_ema_weights_and_the_newest_is_the_runs_model(run, tmp_path):
    for step in (2, 4):
        code, out, err = run_cli(["export", str(run), "--step", str(step), "--out", str(tmp_path / f"s{step}")])
        assert code == 0 and out == f"exported step {step} of {run} into {tmp_path / f's{step}'}\n", err
        state, got = _state(run, step), _weights(tmp_path / f"s{step}")
        assert state["ema"] is not None and all(torch.equal(got[k], state["ema"][k]) for k in got)
        assert not all(torch.equal(got[k], state["model"][k]) for k in got)  # the EMA, not the raw weights
    newest, model = _weights(tmp_path / "s4"), _weights(run)
    assert all(torch.equal(newest[k], model[k]) for k in newest)
    early = _weights(tmp_path / "s2")
    assert not all(torch.equal(early[k], newest[k]) for k in early)
    code, out, err = run_cli(["export", str(run), "--out", str(tmp_path / "default")])  # no --step: the newest
    assert code == 0 and out.startswith("exported step 4 "), err
    default = _weights(tmp_path / "default")
    assert all(torch.equal(default[k], newest[k]) for k in default)
    assert SequenceModel.from_pretrained(tmp_path / "s2").generate(n=1, steps=4, seed=0).texts


def test_export_refuses_in_one_line(run, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine\n")
    cases = [(["export", str(run), "--step", "3", "--out", str(tmp_path / "a")],
              f"{run} has no checkpoint of step 3; it keeps steps 2, 4"),
             (["export", str(run), "--out", str(full)], "exists and is not an empty folder"),
             (["export", str(tmp_path), "--out", str(tmp_path / "b")], "holds no checkpoints")]
    for argv, message in cases:
        code, _, err = run_cli(argv)
        assert code == 2 and err.count("\n") == 1 and message in err, (argv, err)
    assert (full / "notes.txt").read_text() == "mine\n" and not (tmp_path / "a").exists()
