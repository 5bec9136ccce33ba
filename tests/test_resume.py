"""Crash safety: a run killed with SIGKILL at random moments and resumed ends bit-exact with an uninterrupted
run; damaged checkpoints are skipped; Ctrl-C checkpoints and exits; a NaN/inf stops and keeps good weights."""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ddlm.cli import main
from ddlm.config import apply_overrides, load_preset
from ddlm.errors import UserError
from ddlm.train.checkpoint import list_checkpoints, load_latest, verify
from ddlm.train.loop import Trainer, TrainingStopped

# dropout > 0 makes the global torch RNG matter; eval_every makes validation run mid-training; EMA is on in tiny
OVERRIDES = ["train.max_steps=16", "model.max_len=16", "train.threads=1", "train.ckpt_every=1",
             "train.eval_every=5", "train.log_every=2", "model.dropout=0.1", "train.seed=3"]
TIMING = {"tokens_per_s", "elapsed_s"}  # the only log columns allowed to differ after a resume


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    state = torch.get_rng_state()
    yield
    torch.set_num_threads(n)
    torch.set_rng_state(state)


def _train(out, *extra) -> int:
    return main(["train", "--preset", "tiny", "--out", str(out), "--overwrite", "--quiet", *OVERRIDES, *extra])


def _checkpoint(run) -> dict:
    path = list_checkpoints(run)[0]
    return torch.load(io.BytesIO(verify(path)), weights_only=False)


def _log_rows(run) -> list[dict]:
    import csv

    with open(Path(run) / "log.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def _assert_same_tree(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"tensor differs at {where}"
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), f"array differs at {where}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _assert_same_run(ref, run):
    wa, wb = load_file(str(Path(ref) / "model" / "model.safetensors")), load_file(
        str(Path(run) / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ca, cb = _checkpoint(ref), _checkpoint(run)
    for key in ("step", "model", "ema", "optimizer", "noise", "rng"):
        _assert_same_tree(ca[key], cb[key], key)
    assert _log_rows(ref) == _log_rows(run)  # same losses, no duplicated rows after resumes


# ---- SIGKILL at random moments ----------------------------------------------------------------------------
def _complete_step(run: Path) -> int:
    done = [int(p.name[5:13]) for p in (run / "checkpoints").glob("step-*.sha256")]
    return max(done, default=0)


def _tmp_files(run: Path) -> dict:
    """*.tmp files being written (checkpoints, exported model) -> their mtime."""
    found = {}
    for sub in ("checkpoints", "model"):
        try:
            with os.scandir(run / sub) as it:
                found.update({e.path: e.stat().st_mtime_ns for e in it if e.name.endswith(".tmp")})
        except FileNotFoundError:
            pass
    return found


def _wait_then_kill(proc, run: Path, mode: str, rng: random.Random) -> bool:
    """SIGKILL `proc` at a moment chosen by `mode`; False if it finished first.

    start: as soon as the run directory exists; write: while a checkpoint or the exported model is being
    written (a *.tmp newer than the launch); step: a random few ms after a random later checkpoint."""
    stale = _tmp_files(run)
    target = _complete_step(run) + rng.randint(2, 10)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if mode == "start" and (run / "config.yaml").exists():
            break
        if mode == "write" and any(stale.get(p) != t for p, t in _tmp_files(run).items()):
            break
        if mode == "step" and (run / "checkpoints").is_dir() and _complete_step(run) >= target:
            time.sleep(rng.uniform(0, 0.02))
            break
        time.sleep(0.0005 if mode == "write" else 0.005)  # only a write needs fast polling (2 shared cores)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bit_exact(tmp_path):
    ref = tmp_path / "ref"
    assert _train(ref) == 0
    run = tmp_path / "run"
    base = [sys.executable, "-m", "ddlm", "train", "--quiet"]
    cmd = base + ["--preset", "tiny", "--out", str(run), *OVERRIDES]
    rng = random.Random(os.getpid())
    kills = 0
    for mode in ("start", "write", "step", "write"):  # each later one resumes
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        kills += _wait_then_kill(proc, run, mode, rng)
        cmd = base + ["--resume", str(run)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert kills >= 2
    _assert_same_run(ref, run)
    assert not list((run / "checkpoints").glob("*.tmp"))  # partial writes are cleaned up on resume


# ---- damaged checkpoints ----------------------------------------------------------------------------------
def _damage(path: Path, how: str):
    data = path.read_bytes()
    if how == "flip":
        path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    elif how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:  # the checksum was never written (killed between the two renames)
        path.with_suffix(".sha256").unlink()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A run of 8 steps with checkpoints at steps 4 and 8."""
    ref = tmp_path_factory.mktemp("finished") / "ref"
    n, state = torch.get_num_threads(), torch.get_rng_state()
    assert _train(ref, "train.max_steps=8", "train.ckpt_every=4") == 0
    torch.set_num_threads(n)
    torch.set_rng_state(state)
    return ref


@pytest.mark.parametrize("how", ["flip", "truncate", "no-checksum"])
def test_damaged_newest_checkpoint_is_skipped_and_resume_is_exact(tmp_path, finished_run, how):
    import shutil

    ref, run = finished_run, tmp_path / "run"
    shutil.copytree(ref, run)
    newest, older = list_checkpoints(run)
    assert newest.name == "step-00000008.pt" and older.name == "step-00000004.pt"
    _damage(newest, how)
    messages = []
    assert load_latest(run, log=messages.append)["step"] == 4
    assert len(messages) == 1 and str(newest) in messages[0]
    trainer = Trainer.resume(run, progress=False, log=messages.append)
    assert trainer.step == 4
    trainer.run()
    _assert_same_run(ref, run)


def test_no_intact_checkpoint_is_reported(tmp_path, finished_run, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    for p in list_checkpoints(run):
        _damage(p, "flip")
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no intact checkpoint" in err


# ---- Ctrl-C -----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigint_writes_a_checkpoint_and_exits_with_one_line(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "ddlm", "train", "--quiet", "--preset", "tiny", "--out", str(run),
           "model.max_len=16", "train.threads=1", "train.max_steps=100000", "train.ckpt_every=0",
           "train.log_every=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        log = run / "log.csv"
        if log.exists() and log.read_text().count("\n") >= 3:  # header + two steps: inside the loop
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # the signal was ignored: do not leave a 100000-step run behind
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err  # Ctrl-C exits 130 in every command, after the checkpoint
    assert err.count("\n") == 1 and err.startswith("ddlm train: interrupted at step ")
    assert f"--resume {run}" in err and "Traceback" not in err
    state = load_latest(run)
    assert state is not None and str(state["step"]) in err
    assert (run / "model" / "model.safetensors").is_file()


# ---- NaN / inf --------------------------------------------------------------------------------------------
def _tiny_trainer(out, *extra) -> Trainer:
    cfg = apply_overrides(load_preset("tiny"), [*OVERRIDES, "train.max_steps=8", *extra])
    return Trainer(cfg, out, progress=False, log=lambda *a: None)


def _all_finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.dtype.is_floating_point)


@pytest.mark.parametrize("bad", ["nan-loss", "inf-grad"])
def test_non_finite_training_stops_and_keeps_the_last_good_checkpoint(tmp_path, bad):
    trainer = _tiny_trainer(tmp_path / "run")
    objective = trainer.model.family.objective
    calls = []

    def poisoned(model, x0, generator):
        out = objective(model, x0, generator)
        calls.append(1)
        if len(calls) == 4:  # step index 3
            if bad == "nan-loss":
                out["loss"] = out["loss"] * float("nan")
            else:  # a finite loss whose gradient is infinite: d sqrt(u)/du at u = 0
                p = next(trainer.backbone.parameters())
                out["loss"] = out["loss"] + 1e-30 * torch.sqrt(p - p.detach()).sum()
        return out

    trainer.model.family.objective = poisoned
    with pytest.raises(TrainingStopped) as e:
        trainer.run()
    msg = str(e.value)
    assert "\n" not in msg and "at step 3" in msg and "not finite" in msg
    state = load_latest(tmp_path / "run")
    assert state["step"] == 3 and _all_finite(state["model"]) and _all_finite(state["ema"])
    assert _all_finite(load_file(str(tmp_path / "run" / "model" / "model.safetensors")))


def test_huge_learning_rate_gives_one_line_and_exit_2(tmp_path, capsys):
    assert _train(tmp_path / "run", "train.lr=1.0e30", "train.warmup_steps=0", "train.grad_clip=0") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not finite" in err and "train.lr" in err
    state = load_latest(tmp_path / "run")
    assert state is None or _all_finite(state["model"])


@pytest.mark.parametrize("where", ["checkpoint", "model"])
def test_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, where):
    import errno

    from ddlm.pipeline import SequenceModel
    from ddlm.train import checkpoint

    trainer = _tiny_trainer(tmp_path / "run")
    calls = []

    def full(original):
        def write(*args, **kwargs):
            calls.append(1)
            if len(calls) > 2:  # the first two checkpoints fit on the disk
                raise OSError(errno.ENOSPC, "No space left on device")
            return original(*args, **kwargs)
        return write

    if where == "checkpoint":
        monkeypatch.setattr(checkpoint, "_atomic_write", full(checkpoint._atomic_write))  # checkpoint + checksum
    else:
        monkeypatch.setattr(SequenceModel, "save_pretrained", full(SequenceModel.save_pretrained))
    with pytest.raises(UserError) as e:
        trainer.run()
    assert "No space left on device" in str(e.value) and "--resume" in str(e.value) and "\n" not in str(e.value)
    assert load_latest(tmp_path / "run")["step"] == (1 if where == "checkpoint" else 3)


def test_resume_of_a_non_run_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a run directory"):
        Trainer.resume(tmp_path)


# ---- the log of a resumed run -----------------------------------------------------------------------------
def _rows(run) -> list[dict]:
    import csv

    with open(Path(run) / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


class _SignalAt:
    """A batch source that sends this process SIGINT when `step`'s batch is asked for (inside the loop)."""

    def __init__(self, batches, step: int):
        self.batches, self.step = batches, step

    def batch(self, step, rank=0, world=1):
        if step == self.step:
            os.kill(os.getpid(), signal.SIGINT)
        return self.batches.batch(step, rank, world)


def test_interrupted_and_resumed_log_is_the_uninterrupted_log_with_elapsed_going_on(tmp_path):
    from ddlm.train.loop import Interrupted

    overrides = [*OVERRIDES, "train.ckpt_every=4"]
    cfg = apply_overrides(load_preset("tiny"), overrides)
    Trainer(cfg, tmp_path / "ref", progress=False, log=lambda *a: None).run()
    run = tmp_path / "run"
    trainer = Trainer(cfg, run, progress=False, log=lambda *a: None)
    trainer.batches = _SignalAt(trainer.batches, step=9)  # stops after step 10 (a validation step)
    with pytest.raises(Interrupted, match="interrupted at step 10"):
        trainer.run()
    before = _rows(run)
    assert before[-1]["step"] == "10" and before[-1]["split"] == "val"
    saved = load_latest(run)["elapsed_s"]
    assert saved >= float(before[-2]["elapsed_s"]) > 0
    Trainer.resume(run, progress=False, log=lambda *a: None).run()
    assert _log_rows(run) == _log_rows(tmp_path / "ref")  # row for row, all but the timing columns
    rows = _rows(run)
    assert rows[-1]["split"] == "val" and rows[-1]["step"] == "16"  # the final validation row is there
    elapsed = [float(r["elapsed_s"]) for r in rows if r["split"] == "train"]
    assert elapsed == sorted(elapsed) and len(set(elapsed)) == len(elapsed)  # goes on after the resume
    assert float(rows[len(before)]["elapsed_s"]) > saved  # the first row written after the resume


def test_resume_max_steps_extends_a_finished_run(tmp_path, capsys):
    from ddlm.train.optim import lr_factor

    run = tmp_path / "run"
    extra = ["train.max_steps=6", "train.ckpt_every=3", "train.eval_every=0"]
    assert _train(run, *extra) == 0
    six = _rows(run)
    assert [(r["step"], r["split"]) for r in six][-2:] == [("6", "train"), ("6", "val")]
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--max-steps", "10", "--quiet"]) == 0
    assert "trained 10 steps" in capsys.readouterr().out
    assert load_latest(run)["step"] == 10
    cfg = load_preset(str(run / "config.yaml"))
    assert cfg.train.max_steps == 10  # a later plain --resume continues to the new total
    rows = _rows(run)
    assert rows[: len(six)] == six  # the finished run's rows, its final validation included, are kept
    assert [(r["step"], r["split"]) for r in rows[len(six):]] == [("8", "train"), ("10", "train"), ("10", "val")]
    # the schedule is recomputed for the new total: the learning rate of step 8 (index 7) is the new one's
    assert float(rows[len(six)]["lr"]) == pytest.approx(cfg.train.lr * lr_factor(7, cfg.train), rel=1e-5)
    elapsed = [float(r["elapsed_s"]) for r in rows if r["split"] == "train"]
    assert elapsed == sorted(elapsed)
    # resuming a finished run again trains nothing and does not repeat its final validation row
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert _rows(run) == rows
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--max-steps", "4", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--max-steps 4" in err and "(10)" in err
