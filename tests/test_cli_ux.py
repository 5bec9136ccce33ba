"""`ddlm sample` / `ddlm eval` as a user meets them: --version, Ctrl-C exits 130 from start-up on, help lists
from the registries, singular/plural, a random seed that is printed and reproduces, no progress bar off a
terminal, --threads, --batch-size, refusals of impossible requests, and the interval beside every bound."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from ddlm import cli, pipeline
from ddlm.cli import main


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"ddlm {version('ddlm')}"


@pytest.mark.parametrize("command", [["sample", "X"], ["eval", "X"], ["sudoku", "solve", "0" * 81]])
def test_ctrl_c_while_loading_a_model_exits_130(monkeypatch, capsys, command):
    from ddlm.pipeline import SequenceModel

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(SequenceModel, "from_pretrained", interrupted)
    assert main(command) == 130
    assert capsys.readouterr().err.strip().endswith("interrupted")


def test_ctrl_c_while_starting_up_exits_130(monkeypatch, capsys):
    def interrupted():
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert main(["sample", "X"]) == 130
    assert capsys.readouterr().err == "ddlm: interrupted\n"


def test_sample_help_lists_the_registries(monkeypatch, capsys):
    from ddlm import sampling
    from ddlm.sampling import planners

    monkeypatch.setitem(planners.PLANNERS, "zz_new_planner", planners.PLANNERS["random"])
    monkeypatch.setattr(sampling, "SAMPLERS", (*sampling.SAMPLERS, "zz_new_sampler"))
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for name in planners.planner_names():
        assert name in text
    for name in sampling.sampler_names():
        assert name in text
    assert "zz_new_planner" in text and "zz_new_sampler" in text


def test_one_sample_one_token_and_no_bar_off_a_terminal(tiny_run, capsys):
    out, _ = tiny_run
    assert main(["sample", str(out), "--n", "1", "--length", "1", "--seed", "0"]) == 0
    captured = capsys.readouterr()
    last = captured.out.strip().splitlines()[-1]
    assert last.startswith("--- 1 sample, 1 token each, NFE 1 (1 row evaluation), ") and last.endswith(" s")
    assert captured.err == ""  # no bar, no carriage returns; --seed given: no seed note


def test_a_bar_on_a_terminal(tiny_run, capsys, monkeypatch):
    out, _ = tiny_run
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["sample", str(out), "--n", "2", "--length", "8", "--seed", "0"]) == 0
    assert "sampling" in capsys.readouterr().err


def test_seed_is_random_printed_and_reproduces(tiny_run, capsys):
    out, _ = tiny_run
    runs = []
    for _ in range(2):
        assert main(["sample", str(out), "--n", "2", "--length", "16", "--json"]) == 0
        captured = capsys.readouterr()
        runs.append(json.loads(captured.out))
        seed = runs[-1]["seed"]
        assert captured.err == f"note: seed {seed} (add --seed {seed} to draw these samples again)\n"
    assert runs[0]["seed"] != runs[1]["seed"]
    assert main(["sample", str(out), "--n", "2", "--length", "16", "--json", "--seed", str(runs[0]["seed"])]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["samples"] == runs[0]["samples"] and again["seed"] == runs[0]["seed"]


def test_threads(tiny_run, capsys):
    out, _ = tiny_run
    assert cli._threads(None, 1) == 1 and torch.get_num_threads() == 1
    assert cli._threads(2, 1) == 2 and torch.get_num_threads() == 2
    assert main(["sample", str(out), "--n", "1", "--length", "4", "--seed", "0"]) == 0
    assert torch.get_num_threads() == cli.SAMPLE_THREADS == 1
    assert main(["eval", str(out), "--max-blocks", "1", "--threads", "2"]) == 0
    assert torch.get_num_threads() == 2
    capsys.readouterr()


def test_samples_stream_in_batches(tiny_run, capsys, monkeypatch):
    out, model = tiny_run
    sizes = []
    real = pipeline.SequenceModel._sample_batch
    monkeypatch.setattr(pipeline.SequenceModel, "_sample_batch",
                        lambda self, net, n, *a: sizes.append(n) or real(self, net, n, *a))
    assert main(["sample", str(out), "--n", "5", "--batch-size", "2", "--length", "8", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert sizes == [2, 2, 1]
    assert [line for line in text.splitlines() if line.startswith("--- sample")] == \
        [f"--- sample {i} ---" for i in range(1, 6)]
    assert text.splitlines()[-1].startswith("--- 5 samples, 8 tokens each")


def test_impossible_request_is_one_line(tiny_run, capsys, monkeypatch):
    out, _ = tiny_run
    monkeypatch.setattr(pipeline, "memory_bytes", lambda: 2**30)
    assert main(["sample", str(out), "--n", "100000000", "--json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "GiB for the result" in err and "Traceback" not in err
    assert main(["sample", str(out), "--n", "100000000", "--batch-size", "100000000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--batch-size" in err


def test_eval_prints_its_interval(tiny_run, capsys):
    out, _ = tiny_run
    assert main(["eval", str(out), "--max-blocks", "2", "--t-samples", "3", "--seed", "0"]) == 0
    line = capsys.readouterr().out
    assert "3 t-samples" in line and " ± " in line and "(95%) nats/token" in line
    assert main(["eval", str(out), "--max-blocks", "2", "--t-samples", "1"]) == 0
    line = capsys.readouterr().out
    assert "1 t-sample)" in line and "no interval from one t-sample" in line and " ± " not in line


class _FakeJudge:
    """NLL a_i nats over n_i judge tokens, fixed per text index."""
    name = "fake"

    def __init__(self, scores):
        self.scores = scores

    def nll(self, texts):
        return self.scores[: len(texts)]


def test_gen_ppl_interval_oracle():
    from ddlm.eval.gen_ppl import score_texts

    s = score_texts(["a", "b", "c"], _FakeJudge([(2.0, 1), (4.0, 3), (3.0, 2)]))
    # r = 9 / 6; residuals a - r n = 0.5, -0.5, 0; var = 0.5 / (N (N - 1) nbar^2) = 0.5 / (3 * 2 * 4)
    ci = 1.96 * math.sqrt(0.5 / 24)
    assert s["judge_nll"] == pytest.approx(1.5) and s["judge_nll_ci95"] == pytest.approx(ci)
    assert s["gen_ppl_ci95"] == pytest.approx([math.exp(1.5 - ci), math.exp(1.5 + ci)])
    one = score_texts(["a"], _FakeJudge([(2.0, 1)]))
    assert one["judge_nll_ci95"] is None and one["gen_ppl_ci95"] is None


def test_gen_ppl_prints_its_interval(tiny_run, capsys, monkeypatch):
    from ddlm.eval import gen_ppl

    out, _ = tiny_run
    monkeypatch.setattr(gen_ppl, "load_judge", lambda spec: _FakeJudge([(2.0, 1), (4.0, 3), (3.0, 2)]))
    assert main(["eval", str(out), "--gen-ppl", "--samples", "3", "--length", "8", "--steps", "4"]) == 0
    line = capsys.readouterr().out
    assert "3 samples x 8 tokens" in line and "95% interval" in line and "1.5000 ± 0.2829 nats per judge token" in line
    assert main(["eval", str(out), "--gen-ppl", "--samples", "1", "--length", "8", "--steps", "4"]) == 0
    assert "1 sample x 8 tokens" in capsys.readouterr().out


@pytest.mark.slow
def test_output_cut_short_by_the_reader_is_not_an_error(tiny_run):
    import subprocess

    out, _ = tiny_run
    p = subprocess.Popen([sys.executable, "-m", "ddlm", "sample", str(out), "--n", "5000", "--length", "8",
                          "--steps", "2", "--batch-size", "500", "--seed", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = p.stdout.readline()
    p.stdout.close()  # as `| head -1` does
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0 and first == b"--- sample 1 ---\n"
    assert "Traceback" not in err and "Broken pipe" not in err, err
