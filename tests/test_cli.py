"""The command line end to end on a tiny preset, in-process (`ddlm.cli.main`) and through a real process."""

import json
import subprocess
import sys

import pytest

from ddlm.cli import main


def test_train_sample_eval_json(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--out", str(out), "--max-steps", "6", "--quiet",
                 "model.max_len=16", "train.ckpt_every=3"]) == 0
    assert "trained 6 steps" in capsys.readouterr().out
    assert main(["sample", str(out), "--n", "2", "--length", "24", "--steps", "8", "--json", "--prompt", "In"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["samples"]) == 2 and all(s.startswith("In") and len(s) == 24 for s in res["samples"])
    assert res["nfe"] >= 8
    assert main(["eval", str(out), "--json", "--max-blocks", "8", "--t-samples", "2"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert {"nll", "bpc", "ppl", "n_tokens"} <= m.keys() and m["n_tokens"] == 8 * 16
    assert m["nll"] > 0 and abs(m["bpc"] - m["nll"] / 0.6931471805599453) < 1e-9  # char-level: 1 char/token


def test_ar_family_and_resume(tmp_path, capsys):
    out = tmp_path / "ar"
    args = ["train", "--preset", "tiny", "--process", "ar", "--out", str(out), "--quiet", "model.max_len=16"]
    assert main(args + ["--max-steps", "4"]) == 0
    assert main(args + ["--max-steps", "4"]) == 2  # not empty: refuses to overwrite silently
    assert "--resume" in capsys.readouterr().err
    assert main(["eval", str(out), "--json", "--max-blocks", "4"]) == 0
    m = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert m["exact"] is True and m["ci95"] == 0.0


@pytest.mark.slow
def test_real_process_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ddlm", "sample", str(tmp_path / "missing")], capture_output=True,
                       text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr and "Traceback" not in r.stderr
